//! The configuration written back into the operator's own file: `baton sgm add|remove|move`
//! change a group's members, and only those lines change; comments, order and layout stay.

use toml_edit::{ArrayOfTables, DocumentMut, Item, Table};

use super::{Config, MemberConfig};

/// `text` (the file as it is now) edited to say `config`, or `None` when the difference is
/// not one of members or the file is laid out in a way this cannot edit in place (members
/// as inline tables, say): the caller then writes the whole configuration afresh.
pub(super) fn edited(text: &str, config: &Config) -> Option<String> {
    let mut doc: DocumentMut = text.parse().ok()?;
    if let Some(groups) = doc.get_mut("groups") {
        let groups = groups.as_array_of_tables_mut()?;
        // Tables of members that leave their group, so a moved member keeps its comments.
        let mut leaving = Vec::new();
        for group in groups.iter_mut() {
            let want = &config.group(group_id(group)?)?.members;
            if let Some(members) = group.get_mut("members") {
                let members = members.as_array_of_tables_mut()?;
                for t in members.iter() {
                    let id = member_id(t)?;
                    if !want.iter().any(|m| i64::from(m.id) == id) {
                        leaving.push((id, relocated(t)));
                    }
                }
                members.retain(|t| {
                    member_id(t).is_some_and(|id| want.iter().any(|m| i64::from(m.id) == id))
                });
            }
        }
        for group in groups.iter_mut() {
            let want = &config.group(group_id(group)?)?.members;
            add_members(group, want, &mut leaving)?;
        }
    }
    let out = doc.to_string();
    // The edit is kept only if the file now says exactly `config` (a group added or any
    // other change falls back to a full rewrite).
    (toml::from_str::<Config>(&out).ok()? == *config).then_some(out)
}

fn group_id(t: &Table) -> Option<u32> {
    u32::try_from(t.get("id")?.as_integer()?).ok()
}

fn member_id(t: &Table) -> Option<i64> {
    t.get("id")?.as_integer()
}

/// A copy of a member's table, keys, values and comments, without its place in the file
/// (a table keeps the position it was parsed at, which would print it in its old group).
fn relocated(t: &Table) -> Table {
    let mut new = Table::new();
    *new.decor_mut() = t.decor().clone();
    for (k, _) in t {
        if let Some((key, item)) = t.get_key_value(k) {
            new.insert_formatted(key, item.clone());
        }
    }
    new
}

/// Makes the group's `[[groups.members]]` tables say `want` (those that left are already
/// gone): a member that stays keeps its table, one that arrives brings its table from its
/// old group (`leaving`) or gets a new one, appended.
fn add_members(
    group: &mut Table,
    want: &[MemberConfig],
    leaving: &mut Vec<(i64, Table)>,
) -> Option<()> {
    if want.is_empty() && group.get("members").is_none() {
        return Some(());
    }
    let members = group
        .entry("members")
        .or_insert(Item::ArrayOfTables(ArrayOfTables::new()))
        .as_array_of_tables_mut()?;
    for m in want {
        let id = i64::from(m.id);
        let found = members.iter_mut().find(|t| member_id(t) == Some(id));
        if let Some(t) = found {
            update(t, m);
            continue;
        }
        let mut t = match leaving.iter().position(|(l, _)| *l == id) {
            Some(i) => leaving.swap_remove(i).1,
            None => Table::new(),
        };
        update(&mut t, m);
        members.push(t);
    }
    Some(())
}

/// Writes only the fields whose value differs, so an unchanged line keeps its comment.
fn update(t: &mut Table, m: &MemberConfig) {
    if member_id(t) != Some(i64::from(m.id)) {
        t["id"] = toml_edit::value(i64::from(m.id));
    }
    if t.get("downlink").and_then(Item::as_str) != Some(m.downlink.as_str()) {
        t["downlink"] = toml_edit::value(m.downlink.as_str());
    }
    // Absent means site 1 (the serialiser leaves it out too).
    let site = t.get("site").and_then(Item::as_integer).unwrap_or(1);
    if site != i64::from(m.site) {
        t["site"] = toml_edit::value(i64::from(m.site));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const COMMENTED: &str = r#"# The lab's orchestrator. Ask Ana before changing the interval.
[orchestrator]
heartbeat_interval_ms = 100   # three missed = dead

# Group 1: the DMZ.
[[groups]]
id = 1
# Inline tables: a layout the edit must leave as it is.
uplinks = [
    { iface = "up-ext", role = "external", gateway_v4 = "198.18.0.254", prefixes = ["198.18.0.0/24"] },  # the ISP
    { iface = "up-int", role = "internal", gateway_v4 = "198.19.0.254", prefixes = ["198.19.0.0/24"] },
]

# Member 1 is the old box in rack 3.
[[groups.members]]
id = 1
downlink = "dl-sgm1"   # port 7

# Member 2.
[[groups.members]]
id = 2
downlink = "dl-sgm2"

# Group 2: the lab bench.
[[groups]]
id = 2
[[groups.uplinks]]
role = "internal"
prefixes = ["2001:db8:20::/64"]   # IPv6 only
iface = "up-lab"

[[groups.uplinks]]
role = "external"
prefixes = ["2001:db8:21::/64"]
iface = "up-wan"
"#;

    fn commented() -> Config {
        toml::from_str(COMMENTED).expect("the sample parses")
    }

    #[test]
    fn an_add_or_a_removal_changes_only_that_members_lines() {
        // A change, and the text it replaces in the file with what.
        type Case = (fn(&mut Config), &'static str, &'static str);
        let added =
            "downlink = \"dl-sgm2\"\n\n[[groups.members]]\nid = 4\ndownlink = \"dl-sgm4\"\n";
        let cases: [Case; 2] = [
            (
                |c| c.add_member(4, 1, 1, "dl-sgm4").unwrap(),
                "downlink = \"dl-sgm2\"\n",
                added,
            ),
            (
                |c| drop(c.remove_member(2).unwrap()),
                "\n# Member 2.\n[[groups.members]]\nid = 2\ndownlink = \"dl-sgm2\"\n",
                "",
            ),
        ];
        for (change, from, to) in cases {
            let mut c = commented();
            change(&mut c);
            let out = edited(COMMENTED, &c).expect("edited in place");
            assert_eq!(out, COMMENTED.replace(from, to));
        }
    }

    #[test]
    fn a_move_keeps_the_members_comments_and_every_other_line() {
        let mut c = commented();
        c.move_member(1, 2).unwrap();
        let out = edited(COMMENTED, &c).expect("edited in place");
        assert_eq!(toml::from_str::<Config>(&out).unwrap(), c);
        for line in COMMENTED.lines() {
            assert!(out.contains(line), "lost {line:?}:\n{out}");
        }
        assert_eq!(out.lines().count(), COMMENTED.lines().count(), "{out}");
    }

    #[test]
    fn other_changes_fall_back_to_a_full_rewrite() {
        let mut c = commented();
        c.orchestrator.heartbeat_interval_ms = 200;
        assert_eq!(edited(COMMENTED, &c), None);
    }
}
