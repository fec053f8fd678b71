//! `pds project`: declare research projects, their perimeter and members.
//! Every change goes to the audit log before it is applied.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::Subcommand;
use pds_project::perimeter::{ColumnView, DatePrecision, Perimeter};
use pds_project::{AccessMode, Admin, NewProject, Role};

/// `pds project` subcommands.
#[derive(Subcommand, Debug)]
pub(crate) enum ProjectCommand {
    /// Declare a project with its authorisation, dates, access mode and perimeter.
    Create(CreateArgs),
    /// List projects.
    List,
    /// Show a project: dates, members, keys and what each table shows.
    Show {
        /// Project id.
        id: String,
    },
    /// Add a member or change their role (lead, researcher, checker).
    Grant {
        /// Project id.
        id: String,
        /// Account name.
        principal: String,
        /// Role.
        #[arg(long, default_value = "researcher")]
        role: String,
    },
    /// Remove a member.
    Revoke {
        /// Project id.
        id: String,
        /// Account name.
        principal: String,
    },
    /// Replace the perimeter (and cohort), optionally re-pinning the snapshot.
    Perimeter {
        /// Project id.
        id: String,
        /// Perimeter file (TOML; see docs/projects.md).
        #[arg(long)]
        file: PathBuf,
        /// Cohort file: one platform pseudonym per line.
        #[arg(long)]
        cohort: Option<PathBuf>,
        /// Snapshot to pin.
        #[arg(long)]
        snapshot: Option<i64>,
    },
    /// End access now (the project stays on record).
    Expire {
        /// Project id.
        id: String,
    },
    /// Replace the project's pseudonymisation key (every project pseudonym changes).
    RotateKey {
        /// Project id.
        id: String,
    },
}

/// Arguments of `pds project create`.
#[derive(clap::Args, Debug)]
pub(crate) struct CreateArgs {
    /// Id: lower-case letters, digits and '-'.
    id: String,
    /// Title.
    #[arg(long)]
    title: String,
    /// Authorisation reference (e.g. the CNIL decision number).
    #[arg(long)]
    authorisation: String,
    /// First day of access, YYYY-MM-DD (default: today).
    #[arg(long)]
    starts: Option<String>,
    /// Last day of access, YYYY-MM-DD.
    #[arg(long)]
    expires: String,
    /// Access mode: row-level (pseudonymised rows) or aggregate-only.
    #[arg(long, default_value = "row-level")]
    mode: String,
    /// Perimeter file (TOML; see docs/projects.md).
    #[arg(long)]
    perimeter: PathBuf,
    /// Cohort file: one platform pseudonym per line, restricting the population.
    #[arg(long)]
    cohort: Option<PathBuf>,
    /// Snapshot to pin (default: the latest).
    #[arg(long)]
    snapshot: Option<i64>,
}

fn read_perimeter(path: &Path) -> Result<Perimeter> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading the perimeter file {}", path.display()))?;
    Perimeter::from_toml(&text).with_context(|| format!("in {}", path.display()))
}

fn read_cohort(path: Option<&Path>) -> Result<Vec<String>> {
    let Some(path) = path else {
        return Ok(Vec::new());
    };
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading the cohort file {}", path.display()))?;
    Ok(text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_string)
        .collect())
}

/// Runs a `pds project` subcommand.
pub(crate) async fn run(home: &Path, who: Option<&str>, cmd: ProjectCommand) -> Result<()> {
    let h = pds_home::Home::open(home)?;
    let cat = h.catalog().await?;
    match cmd {
        ProjectCommand::List => {
            let rows = cat.projects().await?;
            if rows.is_empty() {
                println!("No project yet; `pds project create` declares one.");
            }
            for r in rows {
                let members = cat.members(&r.id).await?.len();
                let state = if r.expired_at.is_some() {
                    " (expired)"
                } else {
                    ""
                };
                println!(
                    "{}  {}  {}  snapshot {}  {} to {}{}  {} member(s)  [{}]",
                    r.id,
                    r.access_mode,
                    r.authorisation,
                    r.snapshot_id,
                    r.starts_on,
                    r.expires_on,
                    state,
                    members,
                    r.title
                );
            }
            return Ok(());
        }
        ProjectCommand::Show { id } => {
            let info = pds_project::show(&cat, &id).await?;
            print_info(&info);
            return Ok(());
        }
        _ => {}
    }
    // Changes need an accountable actor, the master key (project keys) and
    // the audit log.
    let actor = crate::sql_cmd::principal(who)?;
    let _lock = h.lock_for_writing("change a project")?;
    let keys = h.keys()?;
    let audit = pds_gate::open_audit(&h, cat.clone(), &keys).await?;
    let admin = Admin {
        cat: &cat,
        audit: &audit,
        keys: &keys,
        actor,
    };
    match cmd {
        ProjectCommand::Create(a) => {
            let p = NewProject {
                id: a.id.clone(),
                title: a.title,
                authorisation: a.authorisation,
                starts_on: a
                    .starts
                    .unwrap_or_else(|| chrono::Utc::now().date_naive().to_string()),
                expires_on: a.expires,
                mode: AccessMode::parse(&a.mode)?,
                snapshot: a.snapshot,
                perimeter: read_perimeter(&a.perimeter)?,
                cohort: read_cohort(a.cohort.as_deref())?,
            };
            admin.create(&p).await?;
            println!(
                "Project {} created with its own pseudonymisation key (v1).",
                p.id
            );
            print_info(&admin.show(&p.id).await?);
            println!("Next: pds project grant {} ACCOUNT --role researcher", p.id);
        }
        ProjectCommand::Grant {
            id,
            principal,
            role,
        } => {
            admin.grant(&id, &principal, Role::parse(&role)?).await?;
            println!("{principal} is now {role} of {id}.");
        }
        ProjectCommand::Revoke { id, principal } => {
            admin.revoke(&id, &principal).await?;
            println!("{principal} is no longer a member of {id}.");
        }
        ProjectCommand::Perimeter {
            id,
            file,
            cohort,
            snapshot,
        } => {
            admin
                .set_perimeter(
                    &id,
                    &read_perimeter(&file)?,
                    &read_cohort(cohort.as_deref())?,
                    snapshot,
                )
                .await?;
            println!("Perimeter of {id} replaced.");
            print_info(&admin.show(&id).await?);
        }
        ProjectCommand::Expire { id } => {
            admin.expire(&id).await?;
            println!("Project {id} expired: its members can no longer run statements.");
        }
        ProjectCommand::RotateKey { id } => {
            let v = admin.rotate_key(&id).await?;
            println!(
                "Project {id} now uses key v{v}; the previous key is destroyed and every project pseudonym changed."
            );
        }
        ProjectCommand::List | ProjectCommand::Show { .. } => bail!("unreachable"),
    }
    Ok(())
}

fn print_info(i: &pds_project::ProjectInfo) {
    let p = &i.project;
    println!("{}: {}", p.id, p.title);
    println!("  authorisation  {}", p.authorisation);
    println!(
        "  access         {} from {} to {}{}",
        p.mode.as_str(),
        p.starts_on,
        p.expires_on,
        if p.expired_at.is_some() {
            " (expired)"
        } else {
            ""
        }
    );
    println!("  snapshot       {}", p.snapshot);
    match p.perimeter.years {
        Some([a, b]) => println!("  years          {a}-{b}"),
        None => println!("  years          all"),
    }
    if let Some(pop) = &p.perimeter.population {
        println!("  population     {pop}");
    }
    if i.cohort > 0 {
        println!("  cohort         {} people", i.cohort);
    }
    let full: Vec<&str> = i
        .resolved
        .full_precision
        .iter()
        .map(|c| c.label())
        .collect();
    println!(
        "  full precision {}",
        if full.is_empty() {
            "none (all potential identifiers coarsened)".to_string()
        } else {
            full.join(", ")
        }
    );
    for k in &i.key_versions {
        println!(
            "  key v{}         created {}{}",
            k.0,
            k.1,
            k.2.as_ref()
                .map(|r| format!(", destroyed {r}"))
                .unwrap_or_default()
        );
    }
    for m in &i.members {
        println!(
            "  member         {} ({}, granted by {} on {})",
            m.principal, m.role, m.granted_by, m.granted_at
        );
    }
    for t in &i.resolved.tables {
        let cols: Vec<String> = t
            .columns
            .iter()
            .map(|c| match c.view {
                ColumnView::Plain => c.name.clone(),
                ColumnView::Pseudonym => format!("{}*", c.name),
                ColumnView::Truncated(DatePrecision::Year) => format!("{}~year", c.name),
                ColumnView::Truncated(_) => format!("{}~month", c.name),
                ColumnView::Department => format!("{}~dept", c.name),
            })
            .collect();
        println!("  table {}: {}", t.name, cols.join(" "));
    }
    println!("  (* project pseudonym, ~month/~year/~dept coarsened)");
}
