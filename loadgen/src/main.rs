use clap::Parser;
use loadgen::cli::{Cli, Cmd};
use loadgen::{report, scenarios};

fn main() {
    let cli = Cli::parse();
    if let Err(e) = real_main(cli) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn real_main(cli: Cli) -> anyhow::Result<()> {
    match &cli.cmd {
        Cmd::Compare {
            old,
            new_dir,
            base,
            new,
            svg,
        } => {
            if base.is_empty() {
                let (old, new_dir) = (old.as_ref(), new_dir.as_ref());
                let (old, new_dir) = old.zip(new_dir).expect("clap requires OLD and NEW");
                print!("{}", report::compare_text(old, new_dir)?);
                if let Some(svg) = svg {
                    let (a, b) = (vec![old.clone()], vec![new_dir.clone()]);
                    print!("\n{}", loadgen::gate::compare(&a, &b, Some(svg))?);
                }
            } else {
                print!("{}", loadgen::gate::compare(base, new, svg.as_deref())?);
            }
            Ok(())
        }
        Cmd::Table { dirs, markdown } => {
            print!("{}", report::table_text(dirs, *markdown)?);
            Ok(())
        }
        Cmd::MockServer {
            listen,
            jwt_secret,
            flush_ms,
            drop_every,
            dup_every,
            refuse_every,
        } => {
            let opts = loadgen::mock::MockOpts {
                secret: jwt_secret.clone(),
                flush_ms: *flush_ms,
                drop_every: *drop_every,
                dup_every: *dup_every,
                refuse_every: *refuse_every,
                ..loadgen::mock::MockOpts::new(*listen)
            };
            eprintln!("mock server on ws://{listen}/ws");
            let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
            loadgen::mock::serve(opts, stop, None)?;
            Ok(())
        }
        Cmd::Timeline { path } => {
            let file = loadgen::timeline::find_log(path)?;
            let bytes = std::fs::read(&file)?;
            println!("{}", file.display());
            print!(
                "{}",
                loadgen::timeline::render(&loadgen::timeline::read(&bytes)?)
            );
            Ok(())
        }
        Cmd::Plot {
            dirs,
            svg,
            hist,
            title,
            log_y,
        } => {
            report::plot(dirs, svg, hist.as_deref(), title.as_deref(), *log_y)?;
            eprintln!("wrote {}", svg.display());
            Ok(())
        }
        Cmd::Abuse(a) => {
            let outcome = loadgen::abuse::run(a)?;
            print!("{}", outcome.text);
            if let Some(dir) = &a.common.out {
                scenarios::write_out(dir, &outcome)?;
                println!("results in {}", dir.display());
            }
            Ok(())
        }
        cmd => {
            let (spec, common) = scenarios::Spec::from_cmd(cmd).expect("a scenario");
            let outcome = scenarios::run(&spec, &common)?;
            print!("{}", outcome.text);
            if let Some(dir) = &common.out {
                scenarios::write_out(dir, &outcome)?;
                println!("results in {}", dir.display());
            }
            if let Some(why) = &outcome.failed {
                eprintln!("error: {why}");
                std::process::exit(2);
            }
            Ok(())
        }
    }
}
