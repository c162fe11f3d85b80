//! Which CUDA driver library this process runs on: the system's libcuda (a real GPU) or kiln's
//! CPU emulator of it (cuda/emu/, built by build.rs into a library whose SONAME is `libcuda.so`).
//!
//! cudarc dlopen()s "libcuda.so" on its first call and keeps that library for the life of the
//! process, so the choice is made here, once, before any cudarc call: loading the emulator first
//! makes glibc hand that same object to cudarc's dlopen("libcuda.so") (a loaded library is
//! matched by its SONAME), which `load_emulator` checks. The GPU probe opens the driver itself,
//! so cudarc never caches a library we did not choose.
//!
//! Policy: `KILN_CUDA_DRIVER=system` takes the real driver only, `KILN_CUDA_DRIVER=emulator` the
//! emulator only; unset, tests take a usable GPU or else the emulator (`for_tests`), and the
//! server a usable GPU only (`for_serving`). The first choice stands: a later call that needs the
//! other driver gets an error naming the one loaded.

use std::ffi::{c_int, c_uint, CStr};
use std::path::PathBuf;
use std::sync::{Mutex, OnceLock};

use libloading::os::unix::{Library, RTLD_GLOBAL, RTLD_NOW};

/// The driver library cudarc uses in this process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Driver {
    /// The system's libcuda, with at least one GPU.
    System,
    /// kiln's CPU emulator of the driver, loaded from `path`.
    Emulator { path: PathBuf },
}

impl std::fmt::Display for Driver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Driver::System => write!(f, "the system CUDA driver"),
            Driver::Emulator { path } => write!(f, "kiln's CUDA emulator on the CPU ({})", path.display()),
        }
    }
}

/// The order in which the emulator resumes a block's threads after each barrier (cuda/emu's
/// `kiln_emu::Schedule`): a race between threads shows as results that differ between orders.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Schedule {
    Forward,
    Reverse,
    Random { seed: u64 },
}

/// The driver for a test: `KILN_REQUIRE_GPU` set (tools/gpu-check) means the real GPU or an
/// error; otherwise `KILN_CUDA_DRIVER` decides, and unset, a usable GPU or else the emulator.
pub fn for_tests() -> Result<&'static Driver, String> {
    let wanted = match (std::env::var_os("KILN_REQUIRE_GPU").is_some(), requested()?) {
        (true, Some(Want::Emulator)) => {
            return Err("KILN_REQUIRE_GPU asks for a GPU but KILN_CUDA_DRIVER=emulator asks for the emulator".into())
        }
        (true, _) => Want::System,
        (false, Some(want)) => want,
        (false, None) => Want::GpuOrEmulator,
    };
    choose(wanted)
}

/// The driver for the server and the CLI: `KILN_CUDA_DRIVER` decides, and unset, a usable GPU
/// or nothing (the emulator only when asked for: it is far too slow to serve by accident).
pub fn for_serving() -> Result<&'static Driver, String> {
    choose(requested()?.unwrap_or(Want::GpuOnly))
}

/// The driver chosen so far, if any.
pub fn loaded() -> Option<&'static Driver> {
    LOADED.get().map(|loaded| &loaded.driver)
}

/// Whether this process runs CUDA on kiln's emulator (for logs and tests).
pub fn is_emulator() -> bool {
    matches!(loaded(), Some(Driver::Emulator { .. }))
}

/// Sets the emulator's thread schedule for the kernels launched after this call.
pub fn set_schedule(schedule: Schedule) -> Result<(), String> {
    let loaded = LOADED.get().ok_or("no CUDA driver is loaded yet")?;
    let emulator =
        loaded.emulator.as_ref().ok_or_else(|| format!("{} has no thread schedule to set", loaded.driver))?;
    let (mode, seed) = match schedule {
        Schedule::Forward => (0, 0),
        Schedule::Reverse => (1, 0),
        Schedule::Random { seed } => (2, seed),
    };
    // SAFETY: the emulator exports kiln_emu_set_schedule with this C signature (cuda/emu/driver.cpp),
    // and the library stays loaded for the life of the process.
    let status = unsafe {
        let set = emulator
            .get::<unsafe extern "C" fn(c_int, u64) -> c_int>(b"kiln_emu_set_schedule\0")
            .map_err(|e| format!("the CUDA emulator lacks kiln_emu_set_schedule: {e}"))?;
        set(mode, seed)
    };
    if status == 0 {
        Ok(())
    } else {
        Err(format!("the CUDA emulator refused schedule {schedule:?}"))
    }
}

/// What a caller accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Want {
    System,
    Emulator,
    GpuOrEmulator,
    GpuOnly,
}

struct Loaded {
    driver: Driver,
    /// The emulator's handle, kept open for the process's life (cudarc holds the same object).
    emulator: Option<Library>,
}

static LOADED: OnceLock<Loaded> = OnceLock::new();
/// Serialises deciding, so two threads cannot probe and load at once.
static DECIDING: Mutex<()> = Mutex::new(());

fn requested() -> Result<Option<Want>, String> {
    std::env::var_os("KILN_CUDA_DRIVER").map(|value| parse_request(&value.to_string_lossy())).transpose()
}

fn parse_request(value: &str) -> Result<Want, String> {
    match value {
        "system" => Ok(Want::System),
        "emulator" => Ok(Want::Emulator),
        other => Err(format!("KILN_CUDA_DRIVER is `{other}`; it must be `system` or `emulator`")),
    }
}

fn choose(wanted: Want) -> Result<&'static Driver, String> {
    let _deciding = DECIDING.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    if let Some(loaded) = LOADED.get() {
        return agrees(wanted, &loaded.driver).map(|()| &loaded.driver);
    }
    let loaded = match wanted {
        Want::System | Want::GpuOnly => probe_gpu().map(|()| Loaded { driver: Driver::System, emulator: None })?,
        Want::Emulator => load_emulator()?,
        Want::GpuOrEmulator => match probe_gpu() {
            Ok(()) => Loaded { driver: Driver::System, emulator: None },
            Err(no_gpu) => load_emulator().map_err(|e| format!("{no_gpu}, and {e}"))?,
        },
    };
    tracing::info!("CUDA driver: {}", loaded.driver);
    Ok(&LOADED.get_or_init(|| loaded).driver)
}

/// Whether a caller that wants `wanted` can use the driver already loaded: only a request for
/// the other library by name is refused (the defaults take whichever the process chose).
fn agrees(wanted: Want, loaded: &Driver) -> Result<(), String> {
    match (wanted, loaded) {
        (Want::System, Driver::Emulator { .. }) => {
            Err(format!("{loaded} is already loaded in this process; the system CUDA driver cannot be loaded too"))
        }
        (Want::Emulator, Driver::System) => {
            Err(format!("{loaded} is already loaded in this process; the CUDA emulator cannot be loaded too"))
        }
        _ => Ok(()),
    }
}

/// Whether the system driver starts and sees a GPU, asked through our own handle (so cudarc's
/// cached library is not involved). A driver that started stays loaded: unloading libcuda after
/// cuInit is not safe.
fn probe_gpu() -> Result<(), String> {
    // libcuda.so.1 first: it is the driver's own name, while libcuda.so may be the toolkit's stub.
    let Some(library) = ["libcuda.so.1", "libcuda.so"].iter().find_map(|name| {
        // SAFETY: loading the system driver runs only its initialisers, which have no preconditions.
        unsafe { Library::open(Some(*name), RTLD_NOW) }.ok()
    }) else {
        return Err("no CUDA driver (libcuda not found)".into());
    };
    // SAFETY: cuInit and cuDeviceGetCount have these C signatures in every CUDA driver.
    let result = unsafe {
        let init = library.get::<unsafe extern "C" fn(c_uint) -> c_int>(b"cuInit\0");
        let count = library.get::<unsafe extern "C" fn(*mut c_int) -> c_int>(b"cuDeviceGetCount\0");
        match (init, count) {
            (Ok(init), Ok(count)) => match init(0) {
                0 => {
                    let mut devices: c_int = 0;
                    match count(&mut devices) {
                        0 if devices > 0 => Ok(()),
                        0 => Err("the CUDA driver reports no GPU".to_string()),
                        code => Err(format!("the CUDA driver did not count its GPUs: {}", error_name(&library, code))),
                    }
                }
                code => Err(format!("the CUDA driver did not start: {}", error_name(&library, code))),
            },
            _ => Err("the CUDA driver library lacks cuInit or cuDeviceGetCount".to_string()),
        }
    };
    if result.is_ok() {
        std::mem::forget(library);
    }
    result
}

/// "CUDA_ERROR_NO_DEVICE (100)", or the bare number when the driver cannot name it.
fn error_name(library: &Library, code: c_int) -> String {
    // SAFETY: cuGetErrorName has this C signature; it stores a pointer to a static string.
    let name = unsafe {
        library
            .get::<unsafe extern "C" fn(c_int, *mut *const std::ffi::c_char) -> c_int>(b"cuGetErrorName\0")
            .ok()
            .and_then(|get| {
                let mut name = std::ptr::null();
                (get(code, &mut name) == 0 && !name.is_null())
                    .then(|| CStr::from_ptr(name).to_string_lossy().into_owned())
            })
    };
    match name {
        Some(name) => format!("{name} ({code})"),
        None => format!("CUDA error {code}"),
    }
}

/// The emulator library: `KILN_CUDA_EMULATOR_LIB` at run time, else the one build.rs built.
fn emulator_path() -> Result<PathBuf, String> {
    let path = std::env::var_os("KILN_CUDA_EMULATOR_LIB")
        .map(PathBuf::from)
        // A distinct name: cargo sets a build script's rustc-env variables in the environment of
        // the programs it runs, which would hide a runtime KILN_CUDA_EMULATOR_LIB.
        .or_else(|| option_env!("KILN_CUDA_EMULATOR_BUILT_LIB").map(PathBuf::from))
        .ok_or("this kiln was built without the CUDA emulator library (build.rs sets KILN_CUDA_EMULATOR_BUILT_LIB)")?;
    if !path.is_file() {
        return Err(format!("the CUDA emulator library {} does not exist", path.display()));
    }
    Ok(path)
}

/// libloading's message with dlerror()'s reason, which it keeps as the error's source.
fn dlerror_text(error: &libloading::Error) -> String {
    match std::error::Error::source(error) {
        Some(reason) => format!("{error}: {reason}"),
        None => error.to_string(),
    }
}

/// Loads the emulator so that cudarc's later dlopen("libcuda.so") returns it, and checks that it does.
fn load_emulator() -> Result<Loaded, String> {
    let path = emulator_path()?;
    // SAFETY: the emulator's initialisers only build static tables; RTLD_NOW resolves every
    // symbol now, so a broken build fails here rather than mid-run.
    let emulator = unsafe { Library::open(Some(path.as_os_str()), RTLD_NOW | RTLD_GLOBAL) }
        .map_err(|e| format!("the CUDA emulator {} did not load: {}", path.display(), dlerror_text(&e)))?;
    // What cudarc will get: glibc matches the name against loaded libraries' SONAMEs first.
    // SAFETY: RTLD_NOLOAD only looks the name up among loaded libraries.
    let as_libcuda = unsafe { Library::open(Some("libcuda.so"), RTLD_NOW | libc::RTLD_NOLOAD) }.map_err(|_| {
        format!(
            "the CUDA emulator {} loaded, but not under the name libcuda.so (its SONAME must be libcuda.so)",
            path.display()
        )
    })?;
    // SAFETY: kiln_emu_is_emulator takes nothing and returns an int.
    let is_emulator = unsafe { as_libcuda.get::<unsafe extern "C" fn() -> c_int>(b"kiln_emu_is_emulator\0") }
        .map(|is_emulator| unsafe { is_emulator() } == 1)
        .unwrap_or(false);
    if !is_emulator {
        return Err(format!(
            "another libcuda.so is already loaded in this process, so cudarc would not use the CUDA emulator {}",
            path.display()
        ));
    }
    Ok(Loaded { driver: Driver::Emulator { path }, emulator: Some(emulator) })
}

#[cfg(test)]
mod tests {
    use super::*;

    // Only the parsing: choosing loads a library into the whole test process.
    #[test]
    fn the_driver_request_is_system_or_emulator() {
        assert_eq!(parse_request("system"), Ok(Want::System));
        assert_eq!(parse_request("emulator"), Ok(Want::Emulator));
        assert!(parse_request("gpu").unwrap_err().contains("`system` or `emulator`"));
    }

    #[test]
    fn only_a_request_for_the_other_driver_by_name_is_refused() {
        let emulator = Driver::Emulator { path: "/lib/libkiln_cuda_emu.so".into() };
        let refused = agrees(Want::System, &emulator).unwrap_err();
        assert!(refused.contains("kiln's CUDA emulator") && refused.contains("system CUDA driver"), "{refused}");
        assert!(agrees(Want::Emulator, &Driver::System)
            .unwrap_err()
            .starts_with("the system CUDA driver is already loaded"));
        for wanted in [Want::GpuOrEmulator, Want::GpuOnly] {
            assert!(agrees(wanted, &emulator).is_ok() && agrees(wanted, &Driver::System).is_ok());
        }
        assert!(agrees(Want::Emulator, &emulator).is_ok() && agrees(Want::System, &Driver::System).is_ok());
    }
}
