//! f32 values as the little-endian bytes Parquet PLAIN pages, `.npy` files and
//! dprune's own spill files hold. On little-endian CPUs (every target dprune
//! is built for in practice) the conversions are plain memory copies instead
//! of value-by-value loops: these copies run once or twice per input value.

/// Appends the f32 values of `bytes` (little-endian; its length a multiple
/// of 4) to `out`.
pub fn extend_f32(out: &mut Vec<f32>, bytes: &[u8]) {
    debug_assert!(bytes.len().is_multiple_of(4));
    let n = bytes.len() / 4;
    if cfg!(target_endian = "little") {
        out.reserve(n);
        let len = out.len();
        // SAFETY: `reserve` made room for n more values past `len`; any 4 bytes are a
        // valid f32 and the source (any alignment) does not overlap the spare capacity.
        unsafe {
            std::ptr::copy_nonoverlapping(bytes.as_ptr(), out.as_mut_ptr().add(len).cast::<u8>(), n * 4);
            out.set_len(len + n);
        }
    } else {
        out.extend(
            bytes
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])),
        );
    }
}

/// Calls `write` with the little-endian bytes of `values` (without a copy on
/// little-endian CPUs).
pub fn with_bytes<T>(values: &[f32], write: impl FnOnce(&[u8]) -> T) -> T {
    if cfg!(target_endian = "little") {
        // SAFETY: f32 has no padding; the byte view covers exactly the slice.
        write(unsafe { std::slice::from_raw_parts(values.as_ptr().cast::<u8>(), values.len() * 4) })
    } else {
        let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        write(&bytes)
    }
}

/// Fills `values` by handing `read` their bytes, then reads them as
/// little-endian f32.
pub fn read_into<E>(values: &mut [f32], read: impl FnOnce(&mut [u8]) -> Result<(), E>) -> Result<(), E> {
    // SAFETY: f32 has no padding and any bit pattern is a valid f32.
    let bytes = unsafe { std::slice::from_raw_parts_mut(values.as_mut_ptr().cast::<u8>(), values.len() * 4) };
    read(bytes)?;
    if cfg!(target_endian = "big") {
        for v in values.iter_mut() {
            *v = f32::from_bits(u32::from_le(v.to_bits()));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_the_values_bit_for_bit() {
        let vals = [0.0f32, -0.0, 1.5, f32::NAN, f32::INFINITY, -3.25e-38, f32::from_bits(1)];
        let bytes: Vec<u8> = vals.iter().flat_map(|v| v.to_le_bytes()).collect();
        let mut out = vec![7.0f32];
        extend_f32(&mut out, &bytes[1..1]);
        extend_f32(&mut out, &bytes);
        assert_eq!(out.len(), 1 + vals.len());
        assert!(out[1..].iter().zip(&vals).all(|(a, b)| a.to_bits() == b.to_bits()));
        // An unaligned source is fine.
        let mut shifted = vec![0u8];
        shifted.extend_from_slice(&bytes);
        let mut out2 = Vec::new();
        extend_f32(&mut out2, &shifted[1..]);
        assert!(out2.iter().zip(&vals).all(|(a, b)| a.to_bits() == b.to_bits()));
        assert_eq!(with_bytes(&vals, |b| b.to_vec()), bytes);
        let mut back = vec![0f32; vals.len()];
        read_into::<()>(&mut back, |b| {
            b.copy_from_slice(&bytes);
            Ok(())
        })
        .unwrap();
        assert!(back.iter().zip(&vals).all(|(a, b)| a.to_bits() == b.to_bits()));
    }
}
