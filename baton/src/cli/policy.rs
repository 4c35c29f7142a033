//! `baton policy install|rollback|show`.

use std::path::PathBuf;

use anyhow::Context;
use baton_control::api::{Client, PolicyInstall, PolicyInstalled, PolicyRollback, PolicyStat};
use clap::Subcommand;

#[derive(Subcommand)]
pub enum PolicyCommand {
    /// Install a policy file (TOML, with a `version` above the installed one) on every
    /// Active member of a group, through its SMO master: everywhere or nowhere.
    Install {
        file: PathBuf,
        #[arg(long, default_value_t = 1)]
        group: u32,
    },
    /// Install the previous version again.
    Rollback {
        #[arg(long, default_value_t = 1)]
        group: u32,
    },
    /// The installed versions and the one being installed.
    Show {
        #[arg(long, default_value_t = 1)]
        group: u32,
        #[arg(long)]
        json: bool,
    },
}

pub fn run(client: &Client, cmd: PolicyCommand) -> anyhow::Result<()> {
    let done = |r: PolicyInstalled| {
        println!(
            "group {}: policy version {} enforced by members {:?}",
            r.group, r.version, r.members
        );
    };
    match cmd {
        PolicyCommand::Install { file, group } => {
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("reading {}", file.display()))?;
            done(client.post("/v1/policy", &PolicyInstall { text, group })?);
        }
        PolicyCommand::Rollback { group } => {
            done(client.post("/v1/policy/rollback", &PolicyRollback { group })?);
        }
        PolicyCommand::Show { group, json } => {
            let p: PolicyStat = client.get(&format!("/v1/policy?group={group}"))?;
            if json {
                println!("{}", serde_json::to_string_pretty(&p)?);
                return Ok(());
            }
            println!(
                "group {}: current version {}",
                p.group,
                p.current
                    .as_ref()
                    .map_or("-".into(), |c| c.version.to_string())
            );
            for v in &p.versions {
                println!(
                    "  version {:>4}  installed at {} (Unix time)",
                    v.version, v.installed_at
                );
            }
            if let Some((v, phase)) = &p.installing {
                println!("  installing version {v}: {phase}");
            }
        }
    }
    Ok(())
}
