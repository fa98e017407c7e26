//! The device passphrase: from `HESTIA_PASSPHRASE` for scripts, or asked on the terminal
//! (never echoed), and the commands that set or change it.

use anyhow::{Result, bail};
use hestia_node::client::{ClientLibError, Device};
use hestia_store::StoreError;
use std::path::Path;
use zeroize::Zeroizing;

/// The passphrase that unlocks a device, for scripts (and the new one, where a command sets it).
pub const ENV: &str = "HESTIA_PASSPHRASE";
/// The new passphrase for `account change-passphrase`, for scripts.
pub const ENV_NEW: &str = "HESTIA_NEW_PASSPHRASE";
/// Shorter passphrases are refused: a stolen disk is attacked offline, at leisure.
pub const MIN_CHARS: usize = 8;
/// Tries at the prompt before giving up.
const TRIES: usize = 3;

type Secret = Zeroizing<String>;

fn from_env(var: &str) -> Option<Secret> {
    std::env::var(var).ok().map(Zeroizing::new)
}

/// Asks on the terminal; `var` is what a script sets instead.
fn ask(prompt: &str, why: &str, var: &str) -> Result<Secret> {
    use std::io::IsTerminal;
    // A script's command must not stop to wait on the terminal it was started from.
    if !std::io::stdin().is_terminal() {
        bail!("{why}: set {var}, or run in a terminal to be asked");
    }
    match rpassword::prompt_password(prompt) {
        Ok(p) => Ok(Zeroizing::new(p)),
        Err(e) => bail!("cannot ask for the passphrase ({e}): set {var}"),
    }
}

/// Opens the device in `home`, asking for its passphrase if its data is encrypted.
pub fn open_device(home: &Path) -> Result<Device> {
    if let Some(p) = from_env(ENV) {
        return Device::open_with(home, Some(p.as_bytes())).map_err(locked_hint);
    }
    match Device::open_with(home, None) {
        Err(ClientLibError::Store(StoreError::Locked)) => {}
        other => return Ok(other?),
    }
    for attempt in 1..=TRIES {
        let p = ask(
            "passphrase for this device: ",
            "this device's data is encrypted",
            ENV,
        )?;
        match Device::open_with(home, Some(p.as_bytes())) {
            Err(ClientLibError::Store(StoreError::WrongPassphrase)) if attempt < TRIES => {
                eprintln!("wrong passphrase, try again");
            }
            other => return Ok(other?),
        }
    }
    unreachable!("the last try returns")
}

fn locked_hint(e: ClientLibError) -> anyhow::Error {
    match e {
        ClientLibError::Store(StoreError::WrongPassphrase) => {
            anyhow::anyhow!("wrong passphrase in {ENV} (nothing was changed)")
        }
        e => e.into(),
    }
}

/// A new passphrase: from `var` if set, else asked twice.
pub fn new_passphrase(var: &str) -> Result<Secret> {
    let p = match from_env(var) {
        Some(p) => p,
        None => {
            let why = "a new passphrase is needed";
            let p = ask("new passphrase: ", why, var)?;
            check(&p)?;
            if *ask("the same again: ", why, var)? != *p {
                bail!("the two passphrases differ; nothing was changed");
            }
            p
        }
    };
    check(&p)?;
    Ok(p)
}

fn check(p: &str) -> Result<()> {
    if p.chars().count() < MIN_CHARS {
        bail!("a passphrase needs at least {MIN_CHARS} characters; nothing was changed");
    }
    Ok(())
}

/// `account encrypt` and `account change-passphrase`.
pub fn set(home: &Path, change: bool) -> Result<()> {
    let mut d = open_device(home)?;
    match (d.encryption()?, change) {
        (Some(_), false) => {
            bail!("this device's data is already encrypted (see `account change-passphrase`)")
        }
        (None, true) => bail!("this device's data is not encrypted (see `account encrypt`)"),
        _ => {}
    }
    let new = new_passphrase(if change { ENV_NEW } else { ENV })?;
    if change {
        d.change_passphrase(new.as_bytes())?;
        println!("passphrase changed");
    } else {
        d.encrypt(new.as_bytes())?;
        println!("this device's data is now encrypted under your passphrase");
        println!(
            "note: files written before this, and disk blocks freed since, may still hold old \
             data in clear (see docs/threat-model.md)"
        );
    }
    Ok(())
}

/// A line describing how the device's data is kept, for `account show`.
pub fn describe(d: &Device) -> Result<String> {
    Ok(match d.encryption()? {
        Some(k) => format!(
            "encrypted at rest (Argon2id, {} MiB, {} passes, {} lane)",
            k.m_kib / 1024,
            k.t,
            k.p
        ),
        None => "not encrypted (see `hestia account encrypt`)".into(),
    })
}
