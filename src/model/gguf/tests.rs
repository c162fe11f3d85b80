//! The reader against files the test writer builds, broken ones included.

use super::writer::*;
use super::*;

fn parse(bytes: Vec<u8>) -> Result<GgufFile, ModelError> {
    GgufFile::from_bytes(Path::new("test.gguf"), bytes)
}

fn small_file() -> GgufWriter {
    GgufWriter::new()
        .kv("general.architecture", string("llama"))
        .kv("llama.block_count", MetaValue::U32(2))
        .kv("count.i32", MetaValue::I32(7))
        .kv("eps", MetaValue::F32(1e-5))
        .kv("flag", MetaValue::Bool(true))
        .kv("big", MetaValue::U64(1 << 40))
        .kv("tokens", strings(&["<s>", "a", "b c"]))
        .kv("types", MetaValue::Array(vec![MetaValue::I32(3), MetaValue::I32(1), MetaValue::I32(-1)]))
        .f32_tensor("norm.weight", &[4], &[1.0, 2.0, 3.0, 4.0])
        .f32_tensor("w", &[2, 3], &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
        // One Q8_0 block: d = 1.0, q = 0..32.
        .tensor("q", &[32], 8, [0x00, 0x3C].into_iter().chain(0u8..32).collect())
}

#[test]
fn reads_metadata_of_every_kind() {
    let gguf = parse(small_file().to_bytes()).unwrap();
    assert_eq!(gguf.version(), 3);
    assert_eq!(gguf.require_str("general.architecture").unwrap(), "llama");
    assert_eq!(gguf.get_u32("llama.block_count").unwrap(), Some(2));
    assert_eq!(gguf.require_usize("count.i32").unwrap(), 7);
    assert_eq!(gguf.get_f32("eps").unwrap(), Some(1e-5));
    assert_eq!(gguf.get_bool("flag").unwrap(), Some(true));
    assert_eq!(gguf.get_u64("big").unwrap(), Some(1 << 40));
    assert!(gguf.get_u32("big").is_err(), "2^40 does not fit in u32");
    assert_eq!(gguf.get_str_array("tokens").unwrap(), Some(vec!["<s>", "a", "b c"]));
    assert_eq!(gguf.get_i32_array("types").unwrap(), Some(vec![3, 1, -1]));
    assert_eq!(gguf.get_str("absent").unwrap(), None);
    let err = gguf.get_str("eps").unwrap_err();
    assert_eq!(err.to_string(), "test.gguf: metadata `eps` should be a string, found f32");
    let err = gguf.require_usize("absent").unwrap_err();
    assert_eq!(err.to_string(), "test.gguf: metadata `absent` is missing");
    assert!(gguf.get_usize("types").is_err());
}

#[test]
fn reads_tensors() {
    let gguf = parse(small_file().to_bytes()).unwrap();
    assert_eq!(gguf.tensors().len(), 3);
    let w = gguf.tensor("w").unwrap();
    assert_eq!((w.dims.as_slice(), w.ggml_type, w.row_len(), w.n_rows()), (&[2, 3][..], GgmlType::F32, 2, 3));
    assert_eq!(gguf.dequantize(w).unwrap(), vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
    let mut row = [0f32; 2];
    gguf.dequantize_row(w, 2, &mut row).unwrap();
    assert_eq!(row, [5.0, 6.0]);
    assert!(gguf.dequantize_row(w, 3, &mut row).is_err());
    let q = gguf.tensor("q").unwrap();
    assert_eq!(gguf.tensor_data(q).len(), 34);
    let values = gguf.dequantize(q).unwrap();
    assert_eq!(values[31], 31.0);
    assert_eq!(gguf.data_offset() % 32, 0);
    assert!(matches!(gguf.require_tensor("nope"), Err(ModelError::MissingTensor { .. })));
}

#[test]
fn honours_alignment_and_version_2() {
    let mut writer = small_file().kv("general.alignment", MetaValue::U32(64));
    writer.alignment = 64;
    writer.version = 2;
    let gguf = parse(writer.to_bytes()).unwrap();
    assert_eq!((gguf.alignment(), gguf.version()), (64, 2));
    assert_eq!(gguf.data_offset() % 64, 0);
    assert_eq!(gguf.dequantize(gguf.tensor("norm.weight").unwrap()).unwrap(), vec![1.0, 2.0, 3.0, 4.0]);
}

#[test]
fn every_truncation_is_an_error_not_a_panic() {
    let bytes = small_file().to_bytes();
    // The last tensor (34 bytes) ends the file, so every strict prefix is missing something.
    for len in 0..bytes.len() {
        let err = parse(bytes[..len].to_vec()).expect_err(&format!("a prefix of {len} bytes parsed"));
        let message = err.to_string();
        assert!(message.starts_with("test.gguf: "), "{message}");
    }
    assert!(parse(bytes).is_ok());
}

#[test]
fn every_single_byte_corruption_is_handled() {
    // Flipping any byte must give Ok (a value changed) or an error, never a panic or a huge
    // allocation (the counts are checked against the bytes left).
    let bytes = small_file().to_bytes();
    for i in 0..bytes.len() {
        for flip in [0xFFu8, 0x80, 0x01] {
            let mut corrupt = bytes.clone();
            corrupt[i] ^= flip;
            let _ = parse(corrupt);
        }
    }
}

#[test]
fn rejects_bad_headers_with_clear_messages() {
    let good = small_file().to_bytes();
    let mut bad_magic = good.clone();
    bad_magic[..4].copy_from_slice(b"GGML");
    let err = parse(bad_magic).unwrap_err().to_string();
    assert!(err.contains("not a GGUF file"), "{err}");

    let mut v1 = good.clone();
    v1[4..8].copy_from_slice(&1u32.to_le_bytes());
    assert!(parse(v1).unwrap_err().to_string().contains("version 1 is not supported"));

    let mut big_endian = good.clone();
    big_endian[4..8].copy_from_slice(&3u32.to_be_bytes());
    assert!(parse(big_endian).unwrap_err().to_string().contains("big-endian"));

    let mut absurd = good.clone();
    absurd[8..16].copy_from_slice(&u64::MAX.to_le_bytes());
    let err = parse(absurd).unwrap_err().to_string();
    assert!(err.contains("tensor count 18446744073709551615 is impossible"), "{err}");
}

#[test]
fn rejects_bad_tensors() {
    let err = |writer: GgufWriter| parse(writer.to_bytes()).unwrap_err().to_string();
    let unknown_type = GgufWriter::new().tensor("t", &[4], 99, vec![0; 16]);
    assert!(err(unknown_type).contains("tensor `t` has unknown ggml type 99"));
    let ragged = GgufWriter::new().tensor("t", &[33], 8, vec![0; 68]);
    assert!(err(ragged).contains("not a multiple of the Q8_0 block size 32"));
    let five_dims = GgufWriter::new().tensor("t", &[1, 1, 1, 1, 1], 0, vec![0; 4]);
    assert!(err(five_dims).contains("5 dimensions"));
    let overflow = GgufWriter::new().tensor("t", &[1 << 40, 1 << 40], 0, vec![0; 4]);
    assert!(err(overflow).contains("overflow"));

    // A tensor table that claims more data than the file holds.
    let mut bytes = GgufWriter::new().f32_tensor("t", &[4], &[0.0; 4]).to_bytes();
    bytes.truncate(bytes.len() - 1);
    let message = parse(bytes).unwrap_err().to_string();
    assert!(message.contains("tensor `t` (16 bytes at data offset 0) extends beyond the end of the file"), "{message}");

    let duplicate = GgufWriter::new().f32_tensor("t", &[1], &[0.0]).f32_tensor("t", &[1], &[0.0]);
    assert!(err(duplicate).contains("tensor `t` appears twice"));
    let bad_alignment = GgufWriter::new().kv("general.alignment", MetaValue::U32(24));
    assert!(err(bad_alignment).contains("general.alignment must be a power-of-two"));
}

#[test]
fn rejects_bad_metadata() {
    // Offsets: a 24-byte header, then the key (8-byte length + text), the u32 type, the value.
    let mut bytes = GgufWriter::new().kv("flag", MetaValue::Bool(true)).to_bytes();
    bytes[24 + 12 + 4] = 7;
    assert!(parse(bytes).unwrap_err().to_string().contains("bool byte is 7"));

    let mut bytes = GgufWriter::new().kv("k", MetaValue::U8(0)).to_bytes();
    bytes[24 + 9..24 + 13].copy_from_slice(&42u32.to_le_bytes());
    assert!(parse(bytes).unwrap_err().to_string().contains("metadata `k` has unknown value type 42"));

    let mut bytes = GgufWriter::new().kv("s", string("\u{e9}")).to_bytes();
    bytes[24 + 9 + 4 + 8 + 1] = 0xFF;
    assert!(parse(bytes).unwrap_err().to_string().contains("not valid UTF-8"));

    let nested = (0..5).fold(MetaValue::U8(1), |inner, _| MetaValue::Array(vec![inner]));
    let bytes = GgufWriter::new().kv("deep", nested).to_bytes();
    assert!(parse(bytes).unwrap_err().to_string().contains("nested deeper"));

    let duplicate = GgufWriter::new().kv("k", MetaValue::U8(0)).kv("k", MetaValue::U8(1)).to_bytes();
    assert!(parse(duplicate).unwrap_err().to_string().contains("metadata key `k` appears twice"));
}

#[test]
fn open_maps_a_real_file_and_names_it_in_errors() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.gguf");
    std::fs::write(&path, small_file().to_bytes()).unwrap();
    let gguf = GgufFile::open(&path).unwrap();
    assert_eq!(gguf.path(), path);
    assert_eq!(gguf.dequantize(gguf.tensor("norm.weight").unwrap()).unwrap(), vec![1.0, 2.0, 3.0, 4.0]);

    let empty = dir.path().join("empty.gguf");
    std::fs::write(&empty, b"").unwrap();
    let err = GgufFile::open(&empty).unwrap_err().to_string();
    assert!(err.starts_with(&format!("{}: not a GGUF file", empty.display())), "{err}");
    let missing = dir.path().join("missing.gguf");
    assert!(matches!(GgufFile::open(&missing), Err(ModelError::Io { .. })));
}

/// Found by the `gguf_reader` fuzz target: with a zero first dimension the byte size is 0 whatever
/// the other dimensions are, so the reader accepted dims `[0, 2^64 - 2^40, 248]` and `n_rows` and
/// `n_elements` then overflowed.
#[test]
fn fuzz_found_dims_whose_product_overflows_are_refused() {
    let bytes = GgufWriter::new().tensor("blk.0.ffn_gate_exps.weight", &[0, 0xffff_ff00_0000_0000, 248], 0, Vec::new());
    let err = parse(bytes.to_bytes()).unwrap_err();
    assert!(err.to_string().contains("overflow"), "{err}");
}
