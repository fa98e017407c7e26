//! `hestia contact …`: add, list, verify (safety numbers and QR codes), accept or reject a key
//! that claims a contact's name, remove.

use crate::{json, safe, unlock};
use anyhow::{Context, Result};
use clap::Subcommand;
use hestia_store::client::Trust;
use std::path::Path;

#[derive(Subcommand)]
pub enum ContactCmd {
    /// Add a contact by address or contact card (a file path, or '-' for standard input).
    Add {
        name: String,
        /// `<key>@<node>`, or a card, or a path to a card file, or '-'.
        address: String,
    },
    /// List contacts and their trust state.
    List {
        #[command(flatten)]
        out: json::JsonFlag,
    },
    /// Show the safety number you share with a contact, as digits and a QR code
    ///
    /// Compare it out of band (in person, on a call). --confirm then marks the contact
    /// verified; --code checks a code scanned or pasted from their device and marks them
    /// verified in one step if it matches.
    Verify {
        name: String,
        /// Mark the contact verified: you compared the numbers and they match.
        #[arg(long, conflicts_with = "code")]
        confirm: bool,
        /// Their safety code (`hestia-safety:1:...`, or the 60 digits).
        #[arg(long)]
        code: Option<String>,
    },
    /// Accept a contact that claims to be another as that contact's new key
    ///
    /// Only after comparing the claimant's safety number (`hestia contact verify <claimant>`
    /// shows the new key's number): --confirm says it matched, --code checks their code.
    #[command(group = clap::ArgGroup::new("compared").required(true).args(["confirm", "code"]))]
    Accept {
        /// The contact that claims to be another (`contact list` shows it), such as bob-1a2b3c4d.
        claimant: String,
        /// You compared the claimant's safety number with the person, and it matches.
        #[arg(long)]
        confirm: bool,
        /// The person's safety code for the new key (`hestia-safety:1:...`, or the 60 digits).
        #[arg(long)]
        code: Option<String>,
    },
    /// Reject a contact's key: remove the contact and drop everything that key sends from now on.
    Reject {
        /// The contact to reject (history with it stays).
        name: String,
    },
    /// Remove a contact and its sessions (history stays; a new message from it adds it again).
    Remove {
        /// The contact to remove.
        name: String,
    },
}

/// `hestia contact …`.
pub fn run(cmd: ContactCmd, home: &Path, as_json: bool) -> Result<()> {
    let mut d = unlock::open_device(home)?;
    match cmd {
        ContactCmd::Add { name, address } => {
            let text = if address == "-" {
                std::io::read_to_string(std::io::stdin())?
            } else if Path::new(&address).is_file() {
                std::fs::read_to_string(&address)?
            } else {
                address
            };
            let c = d.add_contact(Some(&name), &text)?;
            println!(
                "added {} ({}), fingerprint {}",
                c.name,
                c.address,
                c.address.user.fingerprint()
            );
        }
        ContactCmd::List { out } if as_json || out.json => {
            for c in d.contacts()? {
                json::print(json::contact(&c));
            }
        }
        ContactCmd::List { .. } => {
            let contacts = d.contacts()?;
            for c in &contacts {
                let mut trust = match &c.trust {
                    Trust::Unverified => "unverified (trusted on first use)".to_string(),
                    Trust::Verified => "verified".to_string(),
                };
                if c.origin == hestia_store::client::Origin::Request {
                    trust.push_str(
                        "; MESSAGE REQUEST (wrote first; reply, verify, or `contact reject` it)",
                    );
                }
                if let Some(claims) = &c.claims {
                    let theirs = contacts
                        .iter()
                        .find(|o| &o.name == claims)
                        .map(|o| o.address.user.fingerprint().to_string())
                        .unwrap_or_else(|| "unknown (no longer a contact)".into());
                    trust = format!(
                        "{trust}; CLAIMS TO BE {claims}, but {claims}'s key is {theirs}: compare \
                         safety numbers (`hestia contact verify {}`)",
                        c.name
                    );
                }
                println!(
                    "{}  {}  {}",
                    safe(&c.name),
                    c.address.user.fingerprint(),
                    trust
                );
            }
        }
        ContactCmd::Verify {
            name,
            confirm,
            code,
        } => {
            let number = d.safety_number(&name)?;
            if let Some(code) = code {
                number.check(&code)?;
                d.verify_contact(&name)?;
                println!("the codes match: {name} marked verified");
                return Ok(());
            }
            if confirm {
                d.verify_contact(&name)?;
                println!("{name} marked verified");
                return Ok(());
            }
            let c = d.contact(&name)?;
            println!(
                "Safety number with {name}, over its key {} (the same on both devices):\n",
                c.address.user.fingerprint()
            );
            println!("{number}\n");
            println!("{}", qr(&number.code())?);
            println!("As text, to paste on their device: {}\n", number.code());
            if let Some(claims) = &c.claims {
                println!(
                    "{name} claims to be {claims}. This is the number of {name}'s key, not of the key \
                     you knew as {claims}. If it matches on their device, run\n  hestia contact \
                     accept {name} --confirm      to make it {claims}'s new key, or\n  hestia contact \
                     reject {name}                if it does not.\n"
                );
            }
            println!("Compare it with {name} in person or on a call, or scan their code. Then run");
            println!("  hestia contact verify {name} --confirm          if the numbers match, or");
            println!(
                "  hestia contact verify {name} --code '<code>'    with the code from their device."
            );
        }
        ContactCmd::Accept {
            claimant,
            confirm: _,
            code,
        } => {
            // The number over the claimant's (the new) key, never the old one's.
            if let Some(code) = code {
                d.safety_number(&claimant)?.check(&code)?;
            }
            let c = d.accept_new_key(&claimant)?;
            println!(
                "{} is now pinned to {} (verified); {claimant} was merged into it",
                c.name,
                c.address.user.fingerprint()
            );
        }
        ContactCmd::Reject { name } => {
            let c = d.reject_contact(&name)?;
            println!(
                "{} removed; everything key {} sends is dropped from now on",
                c.name,
                c.address.user.fingerprint()
            );
        }
        ContactCmd::Remove { name } => {
            let c = d.remove_contact(&name)?;
            println!("{} removed (history kept)", c.name);
        }
    }
    Ok(())
}

/// A QR code as terminal text (two rows per character), dark modules drawn light-on-dark so it
/// scans from a dark terminal.
pub(crate) fn qr(text: &str) -> Result<String> {
    let code = qrcode::QrCode::new(text.as_bytes()).context("making the QR code")?;
    Ok(code
        .render::<qrcode::render::unicode::Dense1x2>()
        .dark_color(qrcode::render::unicode::Dense1x2::Light)
        .light_color(qrcode::render::unicode::Dense1x2::Dark)
        .build())
}
