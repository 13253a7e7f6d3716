//! `cairn-image`: the host tool. Builds disk images, inspects and edits
//! them without mounting (partitions, `grubenv`, slots), validates
//! `config.toml`, and fetches or locks the prebuilt components. A thin
//! front end: each subcommand calls one library function.

use anyhow::{Context, Result};
use cairn_image::build::{self, BuildOptions};
use cairn_image::config::Config;
use cairn_image::inspect::{self, Image};
use cairn_image::layout::Sizes;
use cairn_image::{Arch, components};
use clap::{Parser, Subcommand};
use std::path::{Path, PathBuf};

#[derive(Parser)]
#[command(
    name = "cairn-image",
    version,
    about = "Build and inspect Cairn disk images"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Build a disk image (no root, loop devices or mounts needed).
    Build {
        #[arg(long)]
        arch: Arch,
        /// config.toml for the config partition (validated first); default: the schema's defaults.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Version written to /etc/os-release.
        #[arg(long, default_value = env!("CARGO_PKG_VERSION"))]
        version: String,
        #[arg(long)]
        out: PathBuf,
        #[arg(long, default_value = ".cache/components")]
        cache: PathBuf,
        /// cairn-init binary; default target/<rust target>/release/cairn-init.
        #[arg(long)]
        init: Option<PathBuf>,
        /// cairn binary; default target/<rust target>/release/cairn.
        #[arg(long)]
        cairn: Option<PathBuf>,
        /// cairn-pause binary (the pod sandbox); default target/<rust target>/release/cairn-pause.
        #[arg(long)]
        pause: Option<PathBuf>,
    },
    /// Write a one-layer OCI image archive from files on this machine (for
    /// the config partition's images/ or `cairn import-images`).
    Oci {
        /// Image reference, e.g. localhost/tools/busybox:1.
        #[arg(long)]
        name: String,
        #[arg(long)]
        arch: Arch,
        /// The entrypoint, one argument per flag.
        #[arg(long = "entrypoint", value_name = "ARG")]
        entrypoint: Vec<String>,
        /// HOST_FILE=IMAGE_PATH: a file copied in with its permissions.
        #[arg(long = "file", value_name = "SRC=DEST")]
        files: Vec<String>,
        /// IMAGE_PATH=TARGET: a symbolic link.
        #[arg(long = "link", value_name = "PATH=TARGET")]
        links: Vec<String>,
        /// The archive to write.
        out: PathBuf,
    },
    /// Download and verify the pinned Debian packages.
    Components {
        #[command(subcommand)]
        action: ComponentsAction,
    },
    /// List the partitions of an image: name, first byte, size in bytes.
    Partitions {
        image: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Print the ESP's grubenv, or edit it in place with --set NAME=VALUE.
    Grubenv {
        image: PathBuf,
        #[arg(long = "set", value_name = "NAME=VALUE")]
        set: Vec<String>,
    },
    /// Print the A/B boot state: order, ok, tries.
    Slots { image: PathBuf },
    /// config.toml: validate, generate (init), write into an image or card.
    Config {
        #[command(subcommand)]
        action: ConfigAction,
    },
}

#[derive(Subcommand)]
enum ComponentsAction {
    /// Download the packages into the cache and check them against the lock.
    Fetch {
        #[arg(long)]
        arch: Arch,
        #[arg(long, default_value = ".cache/components")]
        cache: PathBuf,
    },
    /// Maintainer: resolve current versions and rewrite the lock file.
    Lock {
        #[arg(long)]
        arch: Arch,
        #[arg(long, default_value = ".cache/components")]
        cache: PathBuf,
        #[arg(long, default_value = components::LOCK_FILE)]
        lock_file: PathBuf,
    },
}

#[derive(Subcommand)]
enum ConfigAction {
    /// Check a config.toml; errors name the key, line and column.
    Validate { file: PathBuf },
    /// Write a commented config.toml with fresh cluster credentials, an
    /// admin kubeconfig.yaml and the agents' join-token into OUT_DIR.
    Init {
        #[arg(long, default_value = "server", value_parser = ["server", "agent"])]
        role: String,
        /// Server: the API URL in kubeconfig.yaml (default https://127.0.0.1:6443).
        /// Agent: the server to join.
        #[arg(long, value_name = "URL")]
        server: Option<String>,
        /// Agent: the server's join token, or @FILE to read it (its join-token file).
        #[arg(long, value_name = "TOKEN|@FILE")]
        token: Option<String>,
        /// Replace files that exist.
        #[arg(long)]
        force: bool,
        out_dir: PathBuf,
    },
    /// Put a config.toml (validated first) into an image's or a card's
    /// CAIRN partition, keeping the previous one as config.toml.bak. No
    /// mount, no root (write access to the file or device is enough).
    Write { image: PathBuf, file: PathBuf },
}

fn default_binary(arch: Arch, name: &str) -> PathBuf {
    Path::new("target")
        .join(arch.rust_target())
        .join("release")
        .join(name)
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Build {
            arch,
            config,
            version,
            out,
            cache,
            init,
            cairn,
            pause,
        } => {
            let opts = BuildOptions {
                arch,
                config,
                version,
                out,
                cache,
                init: init.unwrap_or_else(|| default_binary(arch, "cairn-init")),
                cairn: cairn.unwrap_or_else(|| default_binary(arch, "cairn")),
                pause: pause.unwrap_or_else(|| default_binary(arch, "cairn-pause")),
                sizes: Sizes::default(),
            };
            let report = build::build(&opts).context("building the image")?;
            println!("{}  {} bytes", report.image.display(), report.image_size);
            println!(
                "  kernel {}  initramfs {}  root squashfs {}  GRUB {}",
                report.kernel, report.initramfs, report.rootfs, report.grub_efi
            );
        }
        Command::Oci {
            name,
            arch,
            entrypoint,
            files,
            links,
            out,
        } => {
            let pair = |s: &str| {
                s.split_once('=')
                    .map(|(a, b)| (a.to_owned(), b.trim_start_matches('/').to_owned()))
                    .with_context(|| format!("{s:?}: expected LEFT=RIGHT"))
            };
            let mut entries = Vec::new();
            for spec in &files {
                let (src, dest) = pair(spec)?;
                let data = std::fs::read(&src).with_context(|| format!("reading {src}"))?;
                let mode = std::os::unix::fs::PermissionsExt::mode(
                    &std::fs::metadata(&src)
                        .with_context(|| format!("reading {src}"))?
                        .permissions(),
                ) & 0o7777;
                entries.push(cairn_image::oci::File::regular(dest, mode, data));
            }
            for spec in &links {
                let (path, target) = spec
                    .split_once('=')
                    .with_context(|| format!("{spec:?}: expected PATH=TARGET"))?;
                entries.push(cairn_image::oci::File::symlink(
                    path.trim_start_matches('/'),
                    target,
                ));
            }
            let image = cairn_image::oci::Image {
                name,
                arch,
                entrypoint,
                files: entries,
            };
            let file = std::fs::File::create(&out)
                .with_context(|| format!("creating {}", out.display()))?;
            cairn_image::oci::write(&image, std::io::BufWriter::new(file))
                .with_context(|| format!("writing {}", out.display()))?;
        }
        Command::Components { action } => match action {
            ComponentsAction::Fetch { arch, cache } => {
                for deb in components::fetch(arch, &cache).context("fetching components")? {
                    println!("{}", deb.display());
                }
            }
            ComponentsAction::Lock {
                arch,
                cache,
                lock_file,
            } => components::lock(arch, &cache, &lock_file).context("locking components")?,
        },
        Command::Partitions { image, json } => {
            let image = Image::open(&image, false)?;
            if json {
                println!("{}", serde_json::to_string_pretty(image.partitions())?);
            } else {
                println!("{:>3}  {:<8} {:>12} {:>12}", "#", "name", "offset", "size");
                for p in image.partitions() {
                    println!(
                        "{:>3}  {:<8} {:>12} {:>12}",
                        p.number, p.name, p.offset, p.size
                    );
                }
            }
        }
        Command::Grubenv { image, set } => {
            print!("{}", inspect::edit_grubenv(&image, &set)?);
        }
        Command::Slots { image } => {
            let state = Image::open(&image, false)?.boot_state()?;
            let order: Vec<&str> = state.order.iter().map(|s| s.name()).collect();
            println!("order: {}", order.join(" "));
            for slot in cairn_image::Slot::ALL {
                let s = state.slot(slot);
                println!(
                    "{}: ok={} tries={} bootable={}",
                    slot,
                    u8::from(s.ok),
                    s.tries,
                    state.bootable(slot)
                );
            }
        }
        Command::Config { action } => match action {
            ConfigAction::Validate { file } => {
                let config = Config::load(&file)?;
                println!(
                    "{}: ok (hostname {}, network {}, role {})",
                    file.display(),
                    config.host.hostname,
                    if config.network.dhcp {
                        "DHCP"
                    } else {
                        "static"
                    },
                    config.cluster.role.as_str()
                );
            }
            ConfigAction::Init {
                role,
                server,
                token,
                force,
                out_dir,
            } => config_init(&role, server, token, force, &out_dir)?,
            ConfigAction::Write { image, file } => {
                let text = std::fs::read_to_string(&file)
                    .with_context(|| format!("reading {}", file.display()))?;
                Config::parse(&text, &file.display().to_string())?;
                let img = Image::open(&image, true)?;
                let kept = img.replace_fat_file(
                    cairn_image::layout::PART_CONFIG,
                    cairn_image::layout::CONFIG_FILE,
                    text.as_bytes(),
                )?;
                println!(
                    "{}: {} written to the {} partition{}",
                    image.display(),
                    cairn_image::layout::CONFIG_FILE,
                    cairn_image::layout::CONFIG_LABEL,
                    if kept {
                        " (previous kept as config.toml.bak)"
                    } else {
                        ""
                    }
                );
            }
        },
    }
    Ok(())
}

/// `config init`: generates, then writes each file mode 0600 (they hold
/// keys), refusing to overwrite unless `force`.
fn config_init(
    role: &str,
    server: Option<String>,
    token: Option<String>,
    force: bool,
    out_dir: &Path,
) -> Result<()> {
    use cairn_image::config::generate::{self, InitOptions};
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let token = match token {
        Some(t) => match t.strip_prefix('@') {
            Some(path) => {
                Some(std::fs::read_to_string(path).with_context(|| format!("reading {path}"))?)
            }
            None => Some(t),
        },
        None => None,
    };
    let role = match role {
        "agent" => cairn_image::config::Role::Agent,
        _ => cairn_image::config::Role::Server,
    };
    let generated = generate::generate(&InitOptions {
        role,
        server,
        token,
    })?;
    let mut files = vec![("config.toml", generated.config)];
    if let Some(k) = generated.kubeconfig {
        files.push(("kubeconfig.yaml", k));
    }
    if let Some(t) = generated.token {
        files.push(("join-token", format!("{t}\n")));
    }
    std::fs::create_dir_all(out_dir).with_context(|| format!("creating {}", out_dir.display()))?;
    if !force {
        for (name, _) in &files {
            let path = out_dir.join(name);
            anyhow::ensure!(
                !path.exists(),
                "{} exists (it holds cluster credentials): pass --force to replace it",
                path.display()
            );
        }
    }
    for (name, text) in &files {
        let path = out_dir.join(name);
        let _ = std::fs::remove_file(&path);
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .and_then(|mut f| f.write_all(text.as_bytes()))
            .with_context(|| format!("writing {}", path.display()))?;
        println!("{}", path.display());
    }
    Ok(())
}

fn main() -> std::process::ExitCode {
    // RUST_LOG may name a level (error, warn, info, debug, trace).
    let level = std::env::var("RUST_LOG")
        .ok()
        .and_then(|l| l.parse().ok())
        .unwrap_or(tracing::Level::INFO);
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_max_level(level)
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    match run(Cli::parse()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("cairn-image: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
