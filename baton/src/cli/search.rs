//! `baton search`.

use std::fmt::Write as _;
use std::net::IpAddr;

use baton_control::api::{Client, SearchResult};
use clap::Args;

#[derive(Args)]
pub struct SearchArgs {
    /// Source address of the packet.
    src: IpAddr,
    /// Destination address.
    dst: IpAddr,
    #[arg(long)]
    sport: Option<u16>,
    #[arg(long)]
    dport: Option<u16>,
    /// tcp, udp, sctp or icmp.
    #[arg(long, default_value = "tcp")]
    proto: String,
    #[arg(long)]
    json: bool,
}

pub fn run(client: &Client, a: &SearchArgs) -> anyhow::Result<()> {
    let mut q = format!("/v1/search?src={}&dst={}&proto={}", a.src, a.dst, a.proto);
    if let Some(p) = a.sport {
        let _ = write!(q, "&sport={p}");
    }
    if let Some(p) = a.dport {
        let _ = write!(q, "&dport={p}");
    }
    let r: SearchResult = client.get(&q)?;
    if a.json {
        println!("{}", serde_json::to_string(&r)?);
    } else {
        let show = |m: Option<u32>| m.map_or("none".to_string(), |m| m.to_string());
        println!(
            "group {} bucket {}: active member {}, backup member {}",
            r.group,
            r.bucket,
            show(r.active),
            show(r.backup)
        );
    }
    Ok(())
}
