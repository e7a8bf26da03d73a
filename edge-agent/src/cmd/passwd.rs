//! `edge-agent passwd`: prints an argon2id hash of a password for `[web] users`. Reads the password
//! without echo from a terminal (asking twice), or one line from a pipe for scripts.

use std::io::{BufRead, IsTerminal};

use anyhow::{bail, Context};
use clap::Args;

#[derive(Args)]
pub struct PasswdArgs {
    /// Also print a ready `[web] users` entry for this user name.
    #[arg(long)]
    pub user: Option<String>,
    /// Role for the printed entry: viewer or admin.
    #[arg(long, default_value = "viewer", value_parser = ["viewer", "admin"])]
    pub role: String,
}

/// Shorter passwords are refused: the page may face a whole LAN.
const MIN_PASSWORD_CHARS: usize = 8;

pub fn passwd(args: PasswdArgs) -> anyhow::Result<()> {
    let password = if std::io::stdin().is_terminal() {
        let first = rpassword::prompt_password("Password: ").context("cannot read the password")?;
        let again = rpassword::prompt_password("Again: ").context("cannot read the password")?;
        if first != again {
            bail!("the two passwords differ; nothing printed");
        }
        first
    } else {
        let mut line = String::new();
        std::io::stdin().lock().read_line(&mut line).context("cannot read the password from standard input")?;
        line.trim_end_matches(['\r', '\n']).to_string()
    };
    if password.chars().count() < MIN_PASSWORD_CHARS {
        bail!("the password is shorter than {MIN_PASSWORD_CHARS} characters; nothing printed");
    }
    let hash = edge_agent::web::auth::hash_password(&password)?;
    match args.user {
        Some(user) => println!("users = [{{ name = {user:?}, password_hash = \"{hash}\", role = \"{}\" }}]", args.role),
        None => println!("{hash}"),
    }
    Ok(())
}
