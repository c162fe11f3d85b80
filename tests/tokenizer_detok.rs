//! IncrementalDecoder: the concatenation of every pushed delta plus `finish()` equals a one-shot
//! `decode` of all ids, on random id sequences and on real texts, for the Llama-2 tokenizer
//! (SentencePiece, byte fallback) and a tiny byte-level BPE tokenizer.

mod tokenizer_support;

use kiln::tokenizer::{IncrementalDecoder, Tokenizer};
use tokenizer_support::{llama2, llama2_hf, smollm2_like_config, stream, write_tiny_byte_level, Rng};

fn tiny() -> (tempfile::TempDir, Tokenizer) {
    let dir = tempfile::tempdir().unwrap();
    write_tiny_byte_level(dir.path(), Some(smollm2_like_config()));
    let tokenizer = Tokenizer::from_dir(dir.path()).unwrap();
    (dir, tokenizer)
}

/// Random ids drawn to make trouble: mostly byte tokens and specials next to ordinary tokens, so
/// that split characters, invalid UTF-8, leading spaces and skipped tokens all occur often.
fn random_ids(rng: &mut Rng, troublesome: &[u32], vocab_size: usize, len: usize) -> Vec<u32> {
    (0..len).map(|_| if rng.below(3) == 0 { rng.below(vocab_size) as u32 } else { *rng.pick(troublesome) }).collect()
}

fn check_stream_equals_decode(tokenizer: &Tokenizer, ids: &[u32], seed: u64) {
    let one_shot = tokenizer.decode(ids);
    let deltas = stream(&mut tokenizer.incremental_decoder(), ids);
    assert_eq!(deltas.concat(), one_shot, "seed {seed}, ids {ids:?}, deltas {deltas:?}");
}

#[test]
fn llama2_random_sequences_stream_like_decode() {
    let tokenizer = llama2();
    let mut rng = Rng::from_env();
    // Specials, ▁ runs, byte tokens (ASCII, UTF-8 lead and continuation bytes, invalid ones).
    let mut troublesome: Vec<u32> = vec![0, 1, 2, 29871, 259, 1678, 15043, 3186, 30411];
    troublesome.extend((0u32..256).map(|b| 3 + b));
    for _ in 0..3000 {
        let len = 1 + rng.below(40);
        let ids = random_ids(&mut rng, &troublesome, tokenizer.vocab_size(), len);
        check_stream_equals_decode(tokenizer, &ids, rng.seed());
    }
}

#[test]
fn llama2_decode_equals_hf_whenever_the_bytes_are_valid_utf8() {
    let (tokenizer, hf) = (llama2(), llama2_hf());
    let mut rng = Rng::from_env();
    let byte = |b: u8| 3 + b as u32;
    // Groups that keep the bytes valid: whole characters as byte tokens (你, 🦙, ASCII), specials,
    // ▁ runs; now and then a lone byte makes the sequence invalid, and is then not compared.
    let groups: Vec<Vec<u32>> = vec![
        vec![0],
        vec![1],
        vec![2],
        vec![29871],
        vec![259],
        vec![1678],
        [0xE4, 0xBD, 0xA0].map(byte).to_vec(),
        [0xF0, 0x9F, 0xA6, 0x99].map(byte).to_vec(),
        vec![byte(b'a')],
        vec![byte(b'\n')],
        vec![byte(b' ')],
    ];
    let mut compared = 0;
    for _ in 0..3000 {
        let mut ids = Vec::new();
        for _ in 0..1 + rng.below(20) {
            match rng.below(10) {
                0..=3 => ids.push(rng.below(tokenizer.vocab_size()) as u32),
                4..=8 => ids.extend(rng.pick(&groups)),
                _ => ids.push(byte(rng.below(256) as u8)),
            }
        }
        let reference = hf.decode(&ids, true).unwrap();
        // HF's ByteFallback replaces every byte of an invalid run with U+FFFD where kiln (and a
        // stream) replaces each maximal invalid sequence once; only valid text must agree.
        if !reference.contains('\u{FFFD}') {
            assert_eq!(tokenizer.decode(&ids), reference, "seed {}, ids {ids:?}", rng.seed());
            compared += 1;
        }
    }
    assert!(compared > 1000, "only {compared} sequences were valid UTF-8 (seed {})", rng.seed());
}

#[test]
fn invalid_byte_runs_differ_from_hf_only_in_the_number_of_replacements() {
    // <0xE4> <0xBD> then "a": an incomplete character. HF writes one U+FFFD per byte of the run.
    let ids = [3 + 0xE4, 3 + 0xBD, 29874];
    assert_eq!(llama2_hf().decode(&ids, true).unwrap(), "\u{FFFD}\u{FFFD}a");
    assert_eq!(llama2().decode(&ids), "\u{FFFD}a");
    assert_eq!(stream(&mut llama2().incremental_decoder(), &ids), ["", "", "\u{FFFD}a", ""]);
    // An unfinished character at the very end is flushed by finish().
    assert_eq!(
        stream(&mut llama2().incremental_decoder(), &[15043, 3 + 0xE4, 3 + 0xBD]),
        ["Hello", "", "", "\u{FFFD}"]
    );
}

#[test]
fn llama2_leading_space_is_stripped_once_even_after_specials() {
    let t = llama2();
    // <s> ▁Hello </s> ▁world: one-shot decode strips only the first space of the whole text.
    let ids = [1, 15043, 2, 3186];
    assert_eq!(t.decode(&ids), "Hello world");
    assert_eq!(stream(&mut t.incremental_decoder(), &ids), ["", "Hello", "", " world", ""]);
    // A lone ▁ first: the strip eats it, and the next token's space survives.
    assert_eq!(stream(&mut t.incremental_decoder(), &[29871, 15043]), ["", " Hello", ""]);
    assert_eq!(t.decode(&[29871, 15043]), " Hello");
}

#[test]
fn continuing_decoder_keeps_the_first_space() {
    let t = llama2();
    let mut rng = Rng::from_env();
    let prompt = t.encode("The capital of France is", true).unwrap();
    let mut troublesome: Vec<u32> = vec![2, 29871, 259, 3681, 29889];
    troublesome.extend((0u32..256).map(|b| 3 + b));
    for _ in 0..500 {
        let len = 1 + rng.below(20);
        let generated = random_ids(&mut rng, &troublesome, t.vocab_size(), len);
        let whole = t.decode(&[prompt.as_slice(), &generated].concat());
        let prompt_text = t.decode(&prompt);
        let streamed = stream(&mut IncrementalDecoder::continuing(t), &generated).concat();
        assert_eq!(format!("{prompt_text}{streamed}"), whole, "seed {}, generated {generated:?}", rng.seed());
    }
    assert_eq!(stream(&mut IncrementalDecoder::continuing(t), &[3681]).concat(), " Paris");
}

#[test]
fn llama2_real_text_streams_token_by_token() {
    let t = llama2();
    let text = "Streaming text: «naïve» 日本語, emoji 🦙👨‍👩‍👧 and\nnew lines  with  spaces.\t𠀀 end";
    let ids = t.encode(text, true).unwrap();
    let deltas = stream(&mut t.incremental_decoder(), &ids);
    assert_eq!(deltas.concat(), text);
    assert!(deltas.iter().all(|d| !d.contains('\u{FFFD}')), "{deltas:?}");
}

#[test]
fn byte_level_random_sequences_stream_like_decode_and_hf() {
    let (dir, tokenizer) = tiny();
    let hf = tokenizers::Tokenizer::from_file(dir.path().join("tokenizer.json")).unwrap();
    let mut rng = Rng::from_env();
    let all: Vec<u32> = (0..tokenizer.vocab_size() as u32).collect();
    for _ in 0..3000 {
        let len = 1 + rng.below(30);
        let ids: Vec<u32> = (0..len).map(|_| *rng.pick(&all)).collect();
        check_stream_equals_decode(&tokenizer, &ids, rng.seed());
        // HF's ByteLevel decoder is a lossy UTF-8 decode of all bytes, the same rule as kiln's.
        assert_eq!(tokenizer.decode(&ids), hf.decode(&ids, true).unwrap(), "seed {}, ids {ids:?}", rng.seed());
    }
}

#[test]
fn byte_level_real_texts_round_trip_through_the_stream() {
    let (_dir, tokenizer) = tiny();
    let mut rng = Rng::from_env();
    let pieces = ["hello", " the", " world", "你", "🦙", "é", " ", "\n", "<|im_end|>", "a", "👨‍👩‍👧", "𠀀", "\t"];
    for _ in 0..500 {
        let text: String = (0..1 + rng.below(12)).map(|_| *rng.pick(&pieces)).collect();
        let ids = tokenizer.encode(&text, false).unwrap();
        let visible = text.replace("<|im_end|>", "");
        let deltas = stream(&mut tokenizer.incremental_decoder(), &ids);
        assert_eq!(deltas.concat(), visible, "seed {}, {text:?} -> {ids:?}", rng.seed());
        assert_eq!(tokenizer.decode(&ids), visible, "seed {}", rng.seed());
        assert!(deltas.iter().all(|d| !d.contains('\u{FFFD}') && !d.contains("<|")), "{deltas:?}");
    }
}
