//! Choosing the compute device from a command-line string.

use burn::tensor::Device;

use crate::error::EncoderError;

/// Parses `cpu`, `cuda` or `cuda:N` (the latter two need the `cuda` feature).
///
/// The CPU device is burn's `flex` backend: pure Rust, multi-threaded (rayon) and SIMD; on
/// this project's reference machine it ran a MiniLM training step about 1.3× faster than
/// `ndarray`, and `cpu` (cubecl-cpu) needs an LLVM download at build time.
pub fn parse_device(spec: &str) -> Result<Device, EncoderError> {
    let spec = spec.trim().to_ascii_lowercase();
    if spec == "cpu" {
        return Ok(Device::flex());
    }
    if let Some(rest) = spec.strip_prefix("cuda") {
        let index = match rest.strip_prefix(':') {
            Some(n) => n.parse::<usize>().map_err(|_| {
                EncoderError::Device(format!("`{spec}`: expected cuda:N with N a number"))
            })?,
            None if rest.is_empty() => 0,
            None => return Err(EncoderError::Device(format!("unknown device `{spec}`"))),
        };
        return cuda(index);
    }
    Err(EncoderError::Device(format!(
        "unknown device `{spec}` (expected cpu, cuda or cuda:N)"
    )))
}

/// A comma-separated list of devices for data-parallel training (`cuda:0,cuda:1`); one entry
/// is the ordinary single-device case. Each device may appear once.
pub fn parse_devices(spec: &str) -> Result<Vec<Device>, EncoderError> {
    let mut devices = Vec::new();
    for part in spec.split(',') {
        let device = parse_device(part)?;
        if devices.contains(&device) {
            return Err(EncoderError::Device(format!(
                "`{spec}`: `{}` is listed twice",
                part.trim()
            )));
        }
        devices.push(device);
    }
    Ok(devices)
}

#[cfg(feature = "cuda")]
fn cuda(index: usize) -> Result<Device, EncoderError> {
    // Checked here because cubecl would find out on a worker thread, by panicking.
    // SAFETY: only tries to open the driver library under its usual names.
    if !unsafe { cudarc::driver::sys::is_culib_present() } {
        return Err(EncoderError::Device(format!(
            "cuda:{index}: no CUDA driver (libcuda.so) on this machine; use --device cpu"
        )));
    }
    let count = cudarc::driver::CudaContext::device_count().map_err(|e| {
        EncoderError::Device(format!(
            "cuda:{index}: the CUDA driver failed to start: {e:?}"
        ))
    })?;
    if index >= usize::try_from(count).unwrap_or(0) {
        return Err(EncoderError::Device(format!(
            "cuda:{index}: this machine has {count} CUDA device(s), numbered from 0"
        )));
    }
    Ok(Device::cuda(index))
}

#[cfg(not(feature = "cuda"))]
fn cuda(_index: usize) -> Result<Device, EncoderError> {
    Err(EncoderError::Device(
        "this build has no CUDA support; rebuild with `cargo xtask build-cuda` (feature `cuda`)"
            .into(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_cpu_and_rejects_nonsense() {
        assert!(parse_device("cpu").is_ok());
        assert!(parse_device("CPU").is_ok());
        let err = parse_device("tpu").unwrap_err().to_string();
        assert!(err.contains("unknown device `tpu`"), "{err}");
        let err = parse_device("cuda:x").unwrap_err().to_string();
        assert!(err.contains("cuda:N"), "{err}");
    }

    #[test]
    fn parses_device_lists() {
        assert_eq!(parse_devices("cpu").unwrap(), vec![Device::flex()]);
        let err = parse_devices("cpu, cpu").unwrap_err().to_string();
        assert!(err.contains("`cpu` is listed twice"), "{err}");
        let err = parse_devices("cpu,tpu").unwrap_err().to_string();
        assert!(err.contains("unknown device `tpu`"), "{err}");
    }
}
