//! `baton sgm add|remove|move|detach|attach`: the orchestrator admits, removes and moves
//! members (Maestro's `asg`-style changes), through the API.

use baton_control::{
    api::{Client, MemberAdd, MemberMove},
    membership::MemberState,
};
use clap::Subcommand;

#[derive(Subcommand)]
pub enum SgmCommand {
    /// Admit member ID to a group, with the orchestrator's interface towards it (within 14
    /// per group and 52 per orchestrator); it joins when heard.
    Add {
        id: u32,
        #[arg(long, default_value_t = 1)]
        group: u32,
        #[arg(long)]
        downlink: String,
        /// Its site (1 or 2) in a dual-site group: 14 members per site, 28 in all.
        #[arg(long, default_value_t = 1)]
        site: u8,
    },
    /// Remove member ID (its buckets go to their backups).
    Remove { id: u32 },
    /// Move member ID to another group (it leaves at once and rejoins there).
    Move {
        id: u32,
        #[arg(long)]
        group: u32,
    },
    /// Take member ID out of service until attached.
    Detach { id: u32 },
    /// Return a detached member to service.
    Attach { id: u32 },
}

pub fn run(client: &Client, cmd: SgmCommand) -> anyhow::Result<()> {
    let (id, state): (u32, MemberState) = match cmd {
        SgmCommand::Add {
            id,
            group,
            downlink,
            site,
        } => (
            id,
            client.post(
                "/v1/members",
                &MemberAdd {
                    id,
                    group,
                    downlink,
                    site,
                },
            )?,
        ),
        SgmCommand::Remove { id } => (id, client.delete(&format!("/v1/members/{id}"))?),
        SgmCommand::Move { id, group } => (
            id,
            client.post(&format!("/v1/members/{id}/move"), &MemberMove { group })?,
        ),
        SgmCommand::Detach { id } => (
            id,
            client.post(&format!("/v1/members/{id}/detach"), &serde_json::json!({}))?,
        ),
        SgmCommand::Attach { id } => (
            id,
            client.post(&format!("/v1/members/{id}/attach"), &serde_json::json!({}))?,
        ),
    };
    println!("member {id}: {}", format!("{state:?}").to_lowercase());
    Ok(())
}
