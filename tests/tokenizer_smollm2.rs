//! SmolLM2's byte-level tokenizer, rebuilt from its GGUF by kiln's converter (the pulled default
//! model), against llama.cpp's ids in tests/data/smollm2_tokenizer.json: encode, decode, streaming.

use kiln::tokenizer::Tokenizer;

#[test]
fn smollm2_matches_llama_cpp() {
    let dir = kiln::model::pull::resolve_model(None).expect("the default model can be pulled");
    let t = Tokenizer::from_dir(&dir).unwrap();
    let text =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/smollm2_tokenizer.json")).unwrap();
    let reference: serde_json::Value = serde_json::from_str(&text).unwrap();
    let mut compared = 0;
    for case in reference["cases"].as_array().unwrap() {
        let text = case["text"].as_str().unwrap();
        let ids: Vec<u32> = case["ids"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect();
        // kiln always reads special-token strings as their ids (llama.cpp's special=true).
        if !case["special"].as_bool().unwrap() && text.contains("<|") {
            continue;
        }
        assert_eq!(t.encode(text, true).unwrap(), ids, "{}", case["name"]);
        let mut visible = case["decoded"].as_str().unwrap().to_owned();
        for special in ["<|im_start|>", "<|im_end|>", "<|endoftext|>"] {
            visible = visible.replace(special, "");
        }
        assert_eq!(t.decode(&ids), visible, "{}", case["name"]);
        let mut decoder = t.incremental_decoder();
        let mut streamed: String = ids.iter().map(|&id| decoder.push(id).to_owned()).collect();
        streamed.push_str(decoder.finish());
        assert_eq!(streamed, visible, "{}", case["name"]);
        compared += 1;
    }
    assert!(compared >= 45, "{compared}");
}
