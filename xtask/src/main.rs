//! `cargo xtask`: the project's task runner. A thin dispatcher with no dependencies: it shells
//! out to cargo.
//!
//! ```text
//! cargo xtask ci                                   fmt check, clippy -D warnings, tests, docs
//! cargo xtask parity                               the backend-parity suite on wgpu (Vulkan; CI: lavapipe)
//! cargo xtask check-gpu                            type-check the wgpu and cuda builds
//! cargo xtask bench [criterion args…]              run the criterion benches
//! cargo xtask bench-compare [--only a,b]           ours against PyTorch eager → docs/performance.md
//! cargo xtask quality [toys|shapes|all] [--quick]  sample quality per network evaluation → docs/quality/
//! cargo xtask <command> [--backend B] [args…]      build `diffusion` in release mode with backend B
//!                                                  (cpu | wgpu | vulkan | cuda) and run `diffusion <command> args…`
//! ```

use std::env;
use std::process::{Command, ExitCode};

const BACKENDS: [&str; 4] = ["cpu", "wgpu", "vulkan", "cuda"];

fn main() -> ExitCode {
    let args: Vec<String> = env::args().skip(1).collect();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(msg) => {
            eprintln!("xtask: {msg}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &[String]) -> Result<(), String> {
    let Some(cmd) = args.first() else {
        return Err(usage());
    };
    let rest = &args[1..];
    match cmd.as_str() {
        "ci" => ci(),
        "check-gpu" => check_gpu(),
        "parity" => parity(),
        "bench" => {
            cargo(&[&["bench", "-p", "diffusion-benches", "--benches", "--"][..], &strs(rest)].concat(), &[])
        }
        "bench-compare" => bench_compare(rest),
        // Dev profile: the dependencies and the kernels are optimised there (Cargo.toml), and it
        // shares the build that the tests use.
        "quality" => cargo(
            &[&["run", "--locked", "-p", "diffusion-benches", "--example", "quality", "--"][..], &strs(rest)]
                .concat(),
            &[],
        ),
        "help" | "--help" | "-h" => {
            println!("{}", usage());
            Ok(())
        }
        _ => run_cli(cmd, rest),
    }
}

fn usage() -> String {
    "usage: cargo xtask ci | parity | check-gpu | bench [args…] | bench-compare [--only CONFIGS] | quality [toys|shapes|all] [--quick] | <diffusion command> [--backend cpu|wgpu|vulkan|cuda] [args…]\n\
     e.g. cargo xtask schedule --schedule cosine --steps 1000 --plot cosine.png"
        .to_string()
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

/// Runs `cargo <args>` with extra environment variables, failing on a non-zero exit.
fn cargo(args: &[&str], envs: &[(&str, &str)]) -> Result<(), String> {
    let cargo = env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    eprintln!("$ cargo {}", args.join(" "));
    let status = Command::new(&cargo)
        .args(args)
        .envs(envs.iter().copied())
        .status()
        .map_err(|e| format!("cannot run {cargo}: {e}"))?;
    if status.success() { Ok(()) } else { Err(format!("`cargo {}` failed ({status})", args.join(" "))) }
}

/// The whole check that CI (`.ci/run`, `.github/workflows/ci.yml`) runs.
fn ci() -> Result<(), String> {
    cargo(&["fmt", "--all", "--", "--check"], &[])?;
    cargo(&["clippy", "--workspace", "--all-targets", "--locked", "--", "-D", "warnings"], &[])?;
    cargo(&["test", "--workspace", "--locked"], &[])?;
    cargo(&["doc", "--workspace", "--no-deps", "--locked"], &[("RUSTDOCFLAGS", "-D warnings")])?;
    // Each library crate's example uses only its public API and the crates below it.
    for (package, example) in EXAMPLES {
        cargo(&["run", "--quiet", "--locked", "-p", package, "--example", example], &[])?;
    }
    parity()?;
    // The four library crates as they would be published (dependency order; each packaged crate
    // is built on its own, against the others as packaged).
    let verify_dir = package_target_dir()?;
    forget_packaged_sources(&verify_dir)?;
    cargo(
        &[
            "package",
            "--locked",
            "--allow-dirty",
            "-p",
            "diffusion-core",
            "-p",
            "diffusion-models",
            "-p",
            "diffusion-train",
            "-p",
            "diffusion-sample",
        ],
        &[("CARGO_TARGET_DIR", verify_dir.to_str().ok_or("the target directory is not UTF-8")?)],
    )?;
    Ok(())
}

/// The packages a software Vulkan driver comes in (Debian/Ubuntu).
const VULKAN_PACKAGES: [&str; 3] = ["mesa-vulkan-drivers", "libvulkan1", "vulkan-tools"];

/// The backend-parity suite (`crates/diffusion-parity`) and the CLI's cross-backend tests, built
/// with the wgpu backend and run on whatever Vulkan driver the machine has — in CI Mesa's
/// software one (lavapipe), installed here with apt when it is missing and we may (root).
fn parity() -> Result<(), String> {
    if !vulkan_device_listed() {
        let root = Command::new("id").arg("-u").output().is_ok_and(|o| o.stdout.starts_with(b"0\n"));
        let apt = Command::new("apt-get").arg("--version").output().is_ok_and(|o| o.status.success());
        if !(root && apt) {
            return Err(format!(
                "the backend-parity suite needs a Vulkan driver, and `vulkaninfo --summary` lists none; \
                 install one (a GPU's, or Mesa's software driver: `apt-get install {}`) and rerun",
                VULKAN_PACKAGES.join(" ")
            ));
        }
        eprintln!("xtask: no Vulkan device listed; installing {} with apt-get", VULKAN_PACKAGES.join(" "));
        let quiet = |args: &[&str]| {
            Command::new("apt-get")
                .args(args)
                .env("DEBIAN_FRONTEND", "noninteractive")
                .status()
                .is_ok_and(|s| s.success())
        };
        if !quiet(&[&["install", "-y", "-q"][..], &VULKAN_PACKAGES].concat()) {
            let _ = quiet(&["update", "-q"]);
            if !quiet(&[&["install", "-y", "-q"][..], &VULKAN_PACKAGES].concat()) {
                return Err(format!("`apt-get install {}` failed", VULKAN_PACKAGES.join(" ")));
            }
        }
        if !vulkan_device_listed() {
            return Err("a Vulkan driver was installed, yet `vulkaninfo --summary` lists no device".into());
        }
    }
    let start = std::time::Instant::now();
    // One feature set for both commands, so that clippy and the tests share one wgpu build.
    let packages = [
        "--locked",
        "-p",
        "diffusion-parity",
        "-p",
        "diffusion-cli",
        "--features",
        "diffusion-parity/wgpu,diffusion-cli/wgpu",
    ];
    cargo(&[&["clippy"][..], &packages, &["--all-targets", "--", "-D", "warnings"]].concat(), &[])?;
    cargo(
        &[&["test"][..], &packages, &["--test", "parity", "--test", "backends"]].concat(),
        // Autotune benchmarks every kernel variant on first use: on a software driver that costs
        // more than it saves in a short test, and the suite checks numbers, not speed.
        &[("CUBECL_AUTOTUNE_LEVEL", "minimal")],
    )?;
    eprintln!("xtask: backend-parity suite (build and run) took {:.0} s", start.elapsed().as_secs_f64());
    Ok(())
}

/// Whether `vulkaninfo --summary` runs and names at least one device.
fn vulkan_device_listed() -> bool {
    Command::new("vulkaninfo")
        .arg("--summary")
        .output()
        .is_ok_and(|o| o.status.success() && String::from_utf8_lossy(&o.stdout).contains("deviceName"))
}

/// The target directory of the packaging check: its own, beside the main one (kept between
/// runs, so burn is built there once), because Cargo treats the packaged crates as registry
/// crates, fingerprinted by name and version only.
fn package_target_dir() -> Result<std::path::PathBuf, String> {
    let main = env::var("CARGO_TARGET_DIR").unwrap_or_else(|_| "target".into());
    Ok(std::path::Path::new(&main).join("package-verify"))
}

/// Cargo verifies interdependent packages against a local registry of the just-packaged crates,
/// unpacked under `$CARGO_HOME/registry/{src,cache}/-<hash>/` and compiled as registry crates —
/// both keyed by name and version only, so a later run (same version, new code) would build the
/// stale copies. Remove our crates from those local-registry folders (the ones whose name starts
/// with `-`; crates.io's are untouched) and their artifacts from the packaging target directory
/// (where every `diffusion-*` artifact is such a copy).
fn forget_packaged_sources(verify_dir: &std::path::Path) -> Result<(), String> {
    let home = env::var("CARGO_HOME")
        .map(std::path::PathBuf::from)
        .or_else(|_| env::var("HOME").map(|h| std::path::Path::new(&h).join(".cargo")))
        .map_err(|_| "neither CARGO_HOME nor HOME is set".to_string())?;
    let mut dirs = Vec::new();
    for kind in ["src", "cache"] {
        for registry in std::fs::read_dir(home.join("registry").join(kind)).into_iter().flatten().flatten() {
            if registry.file_name().to_string_lossy().starts_with('-') {
                dirs.push(registry.path());
            }
        }
    }
    for sub in ["debug/.fingerprint", "debug/deps", "debug/build", "debug/incremental"] {
        dirs.push(verify_dir.join(sub));
    }
    for dir in dirs {
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with("diffusion-")
                || name.starts_with("diffusion_")
                || name.starts_with("libdiffusion_")
            {
                let path = entry.path();
                let removed =
                    if path.is_dir() { std::fs::remove_dir_all(&path) } else { std::fs::remove_file(&path) };
                removed.map_err(|e| format!("cannot remove {}: {e}", path.display()))?;
            }
        }
    }
    Ok(())
}

/// The library crates' example programs, run by `cargo xtask ci`.
const EXAMPLES: [(&str, &str); 4] = [
    ("diffusion-core", "gaussian_closed_form"),
    ("diffusion-models", "networks"),
    ("diffusion-train", "custom_dataset"),
    ("diffusion-sample", "custom_loop"),
];

/// Type-checks the GPU builds. CUDA's LLVM download is skipped with `DOCS_RS=1` (check only;
/// linking it needs the download, i.e. internet access).
fn check_gpu() -> Result<(), String> {
    cargo(&["check", "-p", "diffusion-cli", "--features", "wgpu,vulkan"], &[])?;
    cargo(&["check", "-p", "diffusion-cli", "--features", "cuda"], &[("DOCS_RS", "1")])
}

/// Builds our side, makes a virtual environment with PyTorch (pip, once, under
/// `~/.cache/diffusion-rs/bench-venv`; a benchmark dependency, never a test one), and runs
/// `benches/compare/compare.py`, which writes `docs/performance.md`.
fn bench_compare(rest: &[String]) -> Result<(), String> {
    cargo(&["build", "--release", "-p", "diffusion-cli"], &[])?;
    cargo(&["build", "--release", "-p", "diffusion-benches", "--example", "compare"], &[])?;
    let target = env::var("CARGO_TARGET_DIR").unwrap_or_else(|_| "target".into());
    let home = env::var("HOME").map_err(|_| "HOME is not set".to_string())?;
    let venv = format!("{home}/.cache/diffusion-rs/bench-venv");
    let python = format!("{venv}/bin/python");
    let has_torch = Command::new(&python).args(["-c", "import torch"]).status().is_ok_and(|s| s.success());
    if !has_torch {
        run_program(&["python3", "-m", "venv", &venv])?;
        run_program(&[&python, "-m", "pip", "install", "--quiet", "torch"])?;
    }
    let ours = format!("{target}/release/examples/compare");
    let diffusion = format!("{target}/release/diffusion");
    let mut args = vec![
        python.as_str(),
        "benches/compare/compare.py",
        "--ours",
        &ours,
        "--diffusion",
        &diffusion,
        "--out",
        "docs/performance.md",
    ];
    args.extend(strs(rest));
    run_program(&args)
}

/// Runs a program, failing on a non-zero exit.
fn run_program(argv: &[&str]) -> Result<(), String> {
    eprintln!("$ {}", argv.join(" "));
    let status = Command::new(argv[0])
        .args(&argv[1..])
        .status()
        .map_err(|e| format!("cannot run {}: {e}", argv[0]))?;
    if status.success() { Ok(()) } else { Err(format!("`{}` failed ({status})", argv.join(" "))) }
}

/// `cargo xtask <cmd> [--backend B] args…` → `diffusion <cmd> [--device B] args…`, release build.
fn run_cli(cmd: &str, rest: &[String]) -> Result<(), String> {
    let mut backend = "cpu".to_string();
    let mut forwarded: Vec<String> = Vec::new();
    let mut it = rest.iter();
    while let Some(a) = it.next() {
        if a == "--backend" {
            backend = it.next().ok_or("--backend needs a value: cpu, wgpu, vulkan or cuda")?.clone();
        } else if let Some(b) = a.strip_prefix("--backend=") {
            backend = b.to_string();
        } else {
            forwarded.push(a.clone());
        }
    }
    if !BACKENDS.contains(&backend.as_str()) {
        return Err(format!("unknown backend {backend:?}: expected one of {}", BACKENDS.join(", ")));
    }
    let has_device = forwarded.iter().any(|a| a == "--device" || a.starts_with("--device="));
    let mut args: Vec<String> =
        vec!["run".into(), "--release".into(), "--quiet".into(), "-p".into(), "diffusion-cli".into()];
    let mut envs: Vec<(&str, &str)> = Vec::new();
    if backend != "cpu" {
        args.extend(["--features".into(), backend.clone()]);
    }
    if backend == "cuda" {
        // cubecl-cuda needs no toolkit at build time; pin the API level when nvcc is absent.
        if env::var_os("CUDARC_CUDA_VERSION").is_none()
            && Command::new("nvcc").arg("--version").output().is_err()
        {
            envs.push(("CUDARC_CUDA_VERSION", "12080"));
        }
    }
    args.extend(["--".into(), cmd.into()]);
    if backend != "cpu" && !has_device {
        args.extend(["--device".into(), backend]);
    }
    args.extend(forwarded);
    cargo(&strs(&args), &envs)
}
