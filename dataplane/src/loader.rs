//! Loads the embedded eBPF object and attaches its programs: `distribute` and `egress` on
//! an orchestrator, `steer` on a member. Owns the maps user space writes (bucket table,
//! ports, group settings) and reads (counters). The object-agnostic steps (load, a
//! program, a map, summed counters) are public for the lab's testbed, which loads the test
//! programs' own object with them.

use std::{
    ffi::CString,
    os::fd::RawFd,
    path::{Path, PathBuf},
};

use aya::{
    maps::{Array, DevMap, DevMapHash, MapData, PerCpuArray, XskMap},
    programs::{Xdp, XdpMode},
    Ebpf, EbpfLoader,
};
use baton_common::{
    bucket_index, event, names, programs, steer_stat, Bucket, DownlinkConf, GroupConf, MacKey,
    MemberStats, UplinkConf, UplinkStats, BUCKETS_PER_GROUP_MAX, GROUPS_MAX, IFINDEX_MAX,
    MEMBER_ID_MAX, UPLINKS_MAX,
};

use crate::error::LoadError;

/// The eBPF object built by `build.rs`.
pub static EBPF_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/baton-ebpf"));

/// Interface index of `name`, or a clear error.
pub fn ifindex(name: &str) -> Result<u32, LoadError> {
    let c = CString::new(name).map_err(|_| LoadError::NoSuchInterface(name.to_string()))?;
    // SAFETY: `c` is a NUL-terminated string that outlives the call.
    let idx = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if idx == 0 {
        return Err(LoadError::NoSuchInterface(name.to_string()));
    }
    Ok(idx)
}

fn load_object() -> Result<Ebpf, LoadError> {
    load(EBPF_OBJECT)
}

/// Loads an eBPF object (its maps created; its programs load when first used). Needs root.
pub fn load(object: &[u8]) -> Result<Ebpf, LoadError> {
    // SAFETY: geteuid(2) takes no arguments and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return Err(LoadError::NotRoot);
    }
    EbpfLoader::new().load(object).map_err(LoadError::from)
}

/// The program, loaded into the kernel (once).
pub fn loaded<'a>(ebpf: &'a mut Ebpf, prog: &'static str) -> Result<&'a mut Xdp, LoadError> {
    let p: &mut Xdp = ebpf
        .program_mut(prog)
        .ok_or(LoadError::MissingProgram(prog))?
        .try_into()
        .map_err(|e| LoadError::Program(prog, e))?;
    if p.fd().is_err() {
        p.load().map_err(|e| LoadError::Program(prog, e))?;
    }
    Ok(p)
}

/// Attaches `prog` to `iface` in `mode`.
pub fn attach(
    ebpf: &mut Ebpf,
    prog: &'static str,
    iface: &str,
    mode: XdpMode,
) -> Result<(), LoadError> {
    ifindex(iface)?;
    let p = loaded(ebpf, prog)?;
    p.attach(iface, mode).map_err(|e| LoadError::Attach {
        prog,
        iface: iface.to_string(),
        source: e,
    })?;
    Ok(())
}

/// Map `name` of the object, as type `T`.
pub fn map<'a, T: TryFrom<&'a mut aya::maps::Map>>(
    ebpf: &'a mut Ebpf,
    name: &'static str,
) -> Result<T, LoadError> {
    ebpf.map_mut(name)
        .ok_or(LoadError::MissingMap(name))?
        .try_into()
        .map_err(|_| LoadError::MissingMap(name))
}

/// Map `name` of the object, read-only.
pub fn map_ro<'a, T: TryFrom<&'a aya::maps::Map>>(
    ebpf: &'a Ebpf,
    name: &'static str,
) -> Result<T, LoadError> {
    ebpf.map(name)
        .ok_or(LoadError::MissingMap(name))?
        .try_into()
        .map_err(|_| LoadError::MissingMap(name))
}

/// The orchestrator's programs and maps. Dropping it detaches the programs, unless they
/// were loaded with a pin directory: then maps and attachments are pinned there and stay
/// when the process ends, so the data path keeps forwarding while it restarts.
pub struct Orchestrator {
    ebpf: Ebpf,
    mode: XdpMode,
    pins: Option<PathBuf>,
    /// Attachments made without pins, to detach one.
    links: std::collections::HashMap<String, aya::programs::xdp::XdpLinkId>,
}

/// The pin of the attachment of `prog` to `iface`.
fn link_pin(dir: &Path, prog: &str, iface: &str) -> PathBuf {
    dir.join(format!("link-{prog}-{iface}"))
}

/// Detaches the bpf link pinned at `pin` now (`BPF_LINK_DETACH`); the pin stays for the
/// caller to remove. Removing the pin alone frees the link only when the kernel gets round
/// to it (the pin's inode goes after an RCU grace period, the link in a work item), so an
/// attach right after — a member removed and added back — could still find the old program
/// on the interface (seen on a loaded machine: `bpf_link_create` refused).
fn detach_pinned_link(pin: &Path) -> std::io::Result<()> {
    const BPF_OBJ_GET: libc::c_long = 7;
    const BPF_LINK_DETACH: libc::c_long = 34;
    let path = CString::new(pin.as_os_str().as_encoded_bytes())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    // `union bpf_attr`, zeroed: BPF_OBJ_GET reads `pathname` (u64) at offset 0,
    // BPF_LINK_DETACH reads `link_fd` (u32) at offset 0; the kernel wants the rest zero.
    let mut attr = [0u64; 8];
    attr[0] = path.as_ptr() as u64;
    let size = std::mem::size_of_val(&attr);
    // SAFETY: `attr` is a valid, zero-padded bpf_attr for BPF_OBJ_GET whose `pathname`
    // points at a NUL-terminated string that outlives the call.
    let fd = unsafe { libc::syscall(libc::SYS_bpf, BPF_OBJ_GET, attr.as_mut_ptr(), size) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let mut attr = [0u64; 8];
    attr[0] = fd as u64;
    // SAFETY: `attr` is a valid, zero-padded bpf_attr for BPF_LINK_DETACH naming the link
    // fd just opened.
    let rc = unsafe { libc::syscall(libc::SYS_bpf, BPF_LINK_DETACH, attr.as_mut_ptr(), size) };
    let detached = if rc < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(())
    };
    // SAFETY: `fd` was returned by BPF_OBJ_GET above and is closed once.
    unsafe { libc::close(fd as libc::c_int) };
    detached
}

fn pin_error(path: &Path, e: impl std::fmt::Display) -> LoadError {
    LoadError::Pin {
        path: path.display().to_string(),
        detail: e.to_string(),
    }
}

impl Orchestrator {
    /// Loads the object. `driver` selects native XDP (the default on veth and real NICs);
    /// otherwise the kernel chooses.
    pub fn load(driver: bool) -> Result<Self, LoadError> {
        Ok(Self {
            ebpf: load_object()?,
            mode: if driver {
                XdpMode::Driver
            } else {
                XdpMode::Default
            },
            pins: None,
            links: std::collections::HashMap::default(),
        })
    }

    /// Loads the object with every map pinned under `dir` (a bpf filesystem): maps pinned
    /// by an earlier run are reused with their contents, new ones are created and pinned.
    pub fn load_pinned(driver: bool, dir: &Path) -> Result<Self, LoadError> {
        std::fs::create_dir_all(dir).map_err(|e| pin_error(dir, e))?;
        // The map names, from a throwaway load.
        let names: Vec<String> = load_object()?.maps().map(|(n, _)| n.to_string()).collect();
        let paths: Vec<(String, PathBuf)> =
            names.iter().map(|n| (n.clone(), dir.join(n))).collect();
        let mut loader = EbpfLoader::new();
        for (name, path) in &paths {
            loader.map_pin_path(name.as_str(), path.as_path());
        }
        let ebpf = loader.load(EBPF_OBJECT).map_err(LoadError::from)?;
        Ok(Self {
            ebpf,
            mode: if driver {
                XdpMode::Driver
            } else {
                XdpMode::Default
            },
            pins: Some(dir.to_path_buf()),
            links: std::collections::HashMap::default(),
        })
    }

    /// Attaches `prog` to `iface`; with pins, the attachment is pinned, and one pinned by an
    /// earlier run is kept as it is (it already runs this program on the pinned maps).
    fn attach_kept(&mut self, prog: &'static str, iface: &str) -> Result<(), LoadError> {
        let Some(dir) = self.pins.clone() else {
            ifindex(iface)?;
            let mode = self.mode;
            let p = loaded(&mut self.ebpf, prog)?;
            let id = p.attach(iface, mode).map_err(|e| LoadError::Attach {
                prog,
                iface: iface.to_string(),
                source: e,
            })?;
            self.links.insert(format!("{prog}/{iface}"), id);
            return Ok(());
        };
        let pin = link_pin(&dir, prog, iface);
        if pin.exists() {
            return Ok(());
        }
        ifindex(iface)?;
        let p = loaded(&mut self.ebpf, prog)?;
        let id = p.attach(iface, self.mode).map_err(|e| LoadError::Attach {
            prog,
            iface: iface.to_string(),
            source: e,
        })?;
        let link = p.take_link(id).map_err(|e| LoadError::Program(prog, e))?;
        let fd: aya::programs::links::FdLink = link.try_into().map_err(|e| pin_error(&pin, e))?;
        fd.pin(&pin).map_err(|e| pin_error(&pin, e))?;
        Ok(())
    }

    /// Detaches `egress` from a downlink (a member removed).
    pub fn detach_downlink(&mut self, iface: &str) -> Result<(), LoadError> {
        let prog = programs::EGRESS;
        match &self.pins {
            Some(dir) => {
                let pin = link_pin(dir, prog, iface);
                if pin.exists() {
                    detach_pinned_link(&pin).map_err(|e| pin_error(&pin, e))?;
                    std::fs::remove_file(&pin).map_err(|e| pin_error(&pin, e))?;
                }
            }
            None => {
                if let Some(id) = self.links.remove(&format!("{prog}/{iface}")) {
                    loaded(&mut self.ebpf, prog)?
                        .detach(id)
                        .map_err(|e| LoadError::Program(prog, e))?;
                }
            }
        }
        Ok(())
    }

    /// Detaches and unpins everything pinned under `dir` (the end of a deployment).
    pub fn remove_pins(dir: &Path) -> std::io::Result<usize> {
        let mut n = 0;
        if let Ok(entries) = std::fs::read_dir(dir) {
            for e in entries.flatten() {
                // bpffs's own preloaded iterators (maps.debug, progs.debug) stay.
                if e.file_name().to_string_lossy().ends_with(".debug") {
                    continue;
                }
                std::fs::remove_file(e.path())?;
                n += 1;
            }
        }
        Ok(n)
    }

    /// Configures and attaches `distribute` to an uplink.
    pub fn attach_uplink(&mut self, iface: &str, conf: UplinkConf) -> Result<u32, LoadError> {
        let idx = ifindex(iface)?;
        self.configure_uplink(idx, conf)?;
        self.attach_kept(programs::DISTRIBUTE, iface)?;
        Ok(idx)
    }

    /// Writes an uplink's settings (what `attach_uplink` does short of attaching).
    pub fn configure_uplink(&mut self, idx: u32, conf: UplinkConf) -> Result<(), LoadError> {
        if conf.group >= GROUPS_MAX || conf.slot >= UPLINKS_MAX {
            return Err(LoadError::Config(format!(
                "uplink slot {} or group index {} out of range",
                conf.slot, conf.group
            )));
        }
        check_ifindex(idx)?;
        let mut uplinks: Array<&mut MapData, UplinkConf> = map(&mut self.ebpf, names::UPLINKS)?;
        uplinks.set(conf.slot, conf, 0)?;
        let mut slots: Array<&mut MapData, u32> = map(&mut self.ebpf, names::UPLINK_SLOT)?;
        slots.set(idx, conf.slot + 1, 0)?;
        let mut ports: DevMapHash<&mut MapData> = map(&mut self.ebpf, names::UPLINK_PORTS)?;
        ports.insert(idx, idx, None, 0)?;
        Ok(())
    }

    /// Configures and attaches `egress` to the downlink towards one member.
    pub fn attach_downlink(&mut self, iface: &str, conf: DownlinkConf) -> Result<u32, LoadError> {
        let idx = ifindex(iface)?;
        self.configure_downlink(idx, conf)?;
        self.attach_kept(programs::EGRESS, iface)?;
        Ok(idx)
    }

    /// Writes a downlink's settings without attaching.
    pub fn configure_downlink(&mut self, idx: u32, conf: DownlinkConf) -> Result<(), LoadError> {
        check_ifindex(idx)?;
        check_member(conf.member)?;
        let mut downlinks: Array<&mut MapData, DownlinkConf> =
            map(&mut self.ebpf, names::DOWNLINKS)?;
        downlinks.set(idx, conf, 0)?;
        Ok(())
    }

    /// `prog` loaded in the kernel, with the maps as this orchestrator set them: the lab's
    /// testbed runs it in place on crafted frames (`BPF_PROG_TEST_RUN`).
    pub fn program(&mut self, prog: &'static str) -> Result<&mut Xdp, LoadError> {
        loaded(&mut self.ebpf, prog)
    }

    pub fn set_group(&mut self, group: u32, conf: GroupConf) -> Result<(), LoadError> {
        let mut groups: Array<&mut MapData, GroupConf> = map(&mut self.ebpf, names::GROUPS)?;
        groups.set(group, conf, 0)?;
        Ok(())
    }

    pub fn group(&self, group: u32) -> Result<GroupConf, LoadError> {
        let groups: Array<&MapData, GroupConf> = map_ro(&self.ebpf, names::GROUPS)?;
        Ok(groups.get(&group, 0)?)
    }

    /// Installs a new bucket table for `group`: writes it into the table that is not live,
    /// then flips the group's `table` word, so no CPU ever sees a half-written table.
    pub fn install_buckets(&mut self, group: u32, table: &[Bucket]) -> Result<(), LoadError> {
        let n = table.len() as u32;
        if !n.is_power_of_two() || n > BUCKETS_PER_GROUP_MAX {
            return Err(LoadError::Config(format!(
                "bucket count {n} must be a power of two up to {BUCKETS_PER_GROUP_MAX}"
            )));
        }
        let mut conf = self.group(group)?;
        let next = conf.table ^ 1;
        {
            let mut buckets: Array<&mut MapData, Bucket> = map(&mut self.ebpf, names::BUCKETS)?;
            for (i, b) in table.iter().enumerate() {
                buckets.set(bucket_index(next, group, i as u32), *b, 0)?;
            }
        }
        conf.table = next;
        conf.mask = n - 1;
        self.set_group(group, conf)
    }

    /// The live bucket table of `group`.
    pub fn buckets(&self, group: u32) -> Result<Vec<Bucket>, LoadError> {
        let conf = self.group(group)?;
        let buckets: Array<&MapData, Bucket> = map_ro(&self.ebpf, names::BUCKETS)?;
        (0..=conf.mask)
            .map(|i| Ok(buckets.get(&bucket_index(conf.table, group, i), 0)?))
            .collect()
    }

    /// Makes member `id` reachable through downlink `ifindex` (it is Active).
    pub fn add_member_port(&mut self, id: u32, ifindex: u32) -> Result<(), LoadError> {
        check_member(id)?;
        let mut ports: DevMap<&mut MapData> = map(&mut self.ebpf, names::MEMBER_PORTS)?;
        ports.set(id, ifindex, None, 0)?;
        let mut bcast: DevMapHash<&mut MapData> = map(&mut self.ebpf, names::MEMBER_BCAST)?;
        bcast.insert(id, ifindex, None, 0)?;
        Ok(())
    }

    /// Stops broadcasting to member `id` (it left Active). Its unicast entry stays: no
    /// bucket points at it any more, and a rejoin overwrites it.
    pub fn remove_member_port(&mut self, id: u32) -> Result<(), LoadError> {
        check_member(id)?;
        let mut bcast: DevMapHash<&mut MapData> = map(&mut self.ebpf, names::MEMBER_BCAST)?;
        match bcast.remove(id) {
            // Not there: already removed.
            Ok(()) | Err(aya::maps::MapError::KeyNotFound) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Per-member counters summed over CPUs.
    pub fn member_stats(&self, id: u32) -> Result<MemberStats, LoadError> {
        check_member(id)?;
        let stats: PerCpuArray<&MapData, MemberStats> = map_ro(&self.ebpf, names::MEMBER_STATS)?;
        let mut sum = MemberStats::default();
        for s in stats.get(&id, 0)?.iter() {
            sum.to_member_packets += s.to_member_packets;
            sum.to_member_bytes += s.to_member_bytes;
            sum.from_member_packets += s.from_member_packets;
            sum.from_member_bytes += s.from_member_bytes;
        }
        Ok(sum)
    }

    /// Per-uplink counters summed over CPUs.
    pub fn uplink_stats(&self, slot: u32) -> Result<UplinkStats, LoadError> {
        let stats: PerCpuArray<&MapData, UplinkStats> = map_ro(&self.ebpf, names::UPLINK_STATS)?;
        let mut sum = UplinkStats::default();
        for s in stats.get(&slot, 0)?.iter() {
            sum.rx_packets += s.rx_packets;
            sum.rx_bytes += s.rx_bytes;
            sum.tx_packets += s.tx_packets;
            sum.tx_bytes += s.tx_bytes;
        }
        Ok(sum)
    }

    /// Event and drop counters (see [`baton_common::event`]) summed over CPUs.
    pub fn events(&self) -> Result<Vec<(&'static str, u64)>, LoadError> {
        sum_counters(&self.ebpf, names::EVENTS, &event::NAMES)
    }

    /// The MAC addresses `distribute` learned, with the uplink ifindex of each.
    pub fn learned_macs(&self) -> Result<Vec<([u8; 6], u32)>, LoadError> {
        let m: aya::maps::HashMap<&MapData, MacKey, u32> = map_ro(&self.ebpf, names::MACS)?;
        Ok(m.iter()
            .filter_map(Result::ok)
            .map(|(k, v)| (k.mac, v))
            .collect())
    }
}

fn check_ifindex(idx: u32) -> Result<(), LoadError> {
    if idx >= IFINDEX_MAX {
        return Err(LoadError::Config(format!(
            "interface index {idx} is beyond the {IFINDEX_MAX} Baton supports; recreate the interface"
        )));
    }
    Ok(())
}

fn check_member(id: u32) -> Result<(), LoadError> {
    if id == 0 || id > MEMBER_ID_MAX {
        return Err(LoadError::Config(format!(
            "member id {id} out of range 1..={MEMBER_ID_MAX}"
        )));
    }
    Ok(())
}

/// Per-CPU `u64` counters `0..labels.len()` of map `name`, each summed over CPUs.
pub fn sum_counters(
    ebpf: &Ebpf,
    name: &'static str,
    labels: &[&'static str],
) -> Result<Vec<(&'static str, u64)>, LoadError> {
    let counters: PerCpuArray<&MapData, u64> = map_ro(ebpf, name)?;
    labels
        .iter()
        .enumerate()
        .map(|(i, label)| Ok((*label, counters.get(&(i as u32), 0)?.iter().sum())))
        .collect()
}

/// A member's `steer` program on its data port, with the socket map it redirects to.
pub struct Member {
    ebpf: Ebpf,
}

impl Member {
    pub fn load() -> Result<Self, LoadError> {
        Ok(Self {
            ebpf: load_object()?,
        })
    }

    pub fn attach_steer(&mut self, iface: &str, driver: bool) -> Result<(), LoadError> {
        let mode = if driver {
            XdpMode::Driver
        } else {
            XdpMode::Default
        };
        attach(&mut self.ebpf, programs::STEER, iface, mode)
    }

    /// Points queue `queue`'s entry of the socket map at an AF_XDP socket.
    pub fn register_socket(&mut self, queue: u32, fd: RawFd) -> Result<(), LoadError> {
        let mut xsks: XskMap<&mut MapData> = map(&mut self.ebpf, names::XSKS)?;
        xsks.set(queue, fd, 0)?;
        Ok(())
    }

    /// `steer` counters: (frames handed to a socket, frames with no socket).
    pub fn steer_stats(&self) -> Result<(u64, u64), LoadError> {
        let c = sum_counters(&self.ebpf, names::STEER_STATS, &["to_socket", "no_socket"])?;
        Ok((
            c[steer_stat::TO_SOCKET as usize].1,
            c[steer_stat::NO_SOCKET as usize].1,
        ))
    }
}
