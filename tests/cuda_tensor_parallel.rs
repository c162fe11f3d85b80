//! Tensor parallelism in the CUDA backend. On any driver (kiln's emulator where there is no GPU):
//! two ranks sharing device 0 through the host-staged collective give one rank's first-step
//! logits within tolerance and the same greedy tokens, so the sharding, the all-reduces and rank
//! 0's logits and sampling are checked in CI. With two GPUs or more: the same over NCCL, with
//! the decode steps captured as CUDA graphs: that test is ignored by default (the suite counts it
//! as skipped) and run by tools/gpu-check on a machine with two GPUs or more. And the
//! start-up refusals: an uneven split, too few GPUs, graphs with the host-staged collective.
#![cfg(feature = "cuda")]

use kiln::backend::cuda::device::gpu_count;
use kiln::backend::cuda::driver::is_emulator;
use kiln::backend::cuda::testing::cuda_for_test;
use kiln::backend::cuda::{CudaBackend, CudaError, CudaOptions, Dtype, Transport, WeightSource};
use kiln::backend::plan::{PlanLimits, StepPlan};
use kiln::backend::sampling::{RowSampling, SampledRows};
use kiln::backend::{Backend, KvLayout};
use kiln::engine::sampler::argmax;
use kiln::model::random::random_llama_weights;
use kiln::model::safetensors_dir::WeightDtype;
use kiln::model::ModelConfig;
use kiln::testing::{assert_close, Tolerance};

const LAYOUT: KvLayout = KvLayout { block_size: 16, num_blocks: 32 };
const LIMITS: PlanLimits = PlanLimits { max_batch_tokens: 64, max_seqs: 4, max_blocks_per_seq: 16 };
const VOCAB: usize = 512;

/// 4 heads over 2 KV heads (grouped-query attention survives the split: each rank has 2 query
/// heads reading 1 KV head), head_dim 64 as the kernels need, 512 MLP features: 2 ranks halve
/// them all, and every rank's width is still a multiple of 8.
fn config(heads: usize, kv_heads: usize) -> ModelConfig {
    let json = format!(
        r#"{{"architectures":["LlamaForCausalLM"],"hidden_size":{},"intermediate_size":512,"num_hidden_layers":2,
        "num_attention_heads":{heads},"num_key_value_heads":{kv_heads},"head_dim":64,"vocab_size":{VOCAB},
        "rms_norm_eps":1e-5,"max_position_embeddings":256,"rope_theta":10000.0,"tie_word_embeddings":false}}"#,
        heads * 64
    );
    ModelConfig::from_json(&json, std::path::Path::new("cuda_tensor_parallel_test")).unwrap()
}

fn prompt(seed: u32, len: usize) -> Vec<u32> {
    (0..len as u32).map(|i| (i * 37 + seed * 101 + 11) % VOCAB as u32).collect()
}

/// Activations are f16 on every rank; only the order of the f32 partial sums of o_proj and
/// down_proj differs from one rank, and that can move a value by one f16 rounding, which two
/// layers carry to the logits (measured on the emulator: at most 5.3e-4 on logits of order 1;
/// without one of the all-reduces the logits are off by whole units).
const RANKS_AGREE: Tolerance = Tolerance { atol: 5e-3, rtol: 5e-3 };

/// A prefill of two prompts (its logits returned), then greedy decode steps through
/// `execute_and_sample` (rank 0 samples on the device): each sequence's tokens.
fn greedy_run(backend: &mut CudaBackend, decode_steps: usize) -> (Vec<f32>, Vec<Vec<u32>>) {
    let tables: [Vec<u32>; 2] = [(0..16).collect(), (16..32).collect()];
    let prompts = [prompt(1, 19), prompt(2, 7)];
    let mut plan = StepPlan::new(LIMITS, LAYOUT.block_size);
    for (p, table) in prompts.iter().zip(&tables) {
        plan.push_sequence(p, 0, table, true).unwrap();
    }
    let mut logits = vec![f32::NAN; 2 * VOCAB];
    backend.execute(&plan, &mut logits).unwrap();
    let mut generated: Vec<Vec<u32>> = logits.chunks(VOCAB).map(|row| vec![argmax(row)]).collect();
    let mut lengths = [prompts[0].len(), prompts[1].len()];
    let mut sampled = SampledRows::with_capacity(2);
    for _ in 0..decode_steps {
        plan.clear();
        for s in 0..2 {
            plan.push_sequence(&[*generated[s].last().unwrap()], lengths[s], &tables[s], true).unwrap();
            lengths[s] += 1;
        }
        let rows = [RowSampling::greedy(), RowSampling::greedy()];
        backend.execute_and_sample(&plan, &rows, &[], &[], &mut sampled).unwrap();
        for (s, tokens) in generated.iter_mut().enumerate() {
            tokens.push(sampled.token(s));
        }
    }
    (logits, generated)
}

fn one_rank(config: &ModelConfig, seed: u64) -> CudaBackend {
    let weights = random_llama_weights(config, seed, WeightDtype::F16);
    let options = CudaOptions { dtype: Dtype::F16, graphs: true };
    CudaBackend::new(config.clone(), WeightSource::Host(&weights), LAYOUT, LIMITS, options).unwrap()
}

fn assert_ranks_agree(one: (Vec<f32>, Vec<Vec<u32>>), split: (Vec<f32>, Vec<Vec<u32>>), label: &str) {
    assert!(one.0.iter().all(|v| v.is_finite()), "{label}: one rank's logits are finite");
    let max = one.0.iter().zip(&split.0).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
    eprintln!("{label}: first-step logits differ by at most {max:.3e}; tokens {:?}", split.1);
    assert_close(&split.0, &one.0, RANKS_AGREE);
    assert_eq!(split.1, one.1, "{label}: greedy tokens of 2 ranks against 1");
}

#[test]
fn two_staged_ranks_on_one_device_match_one_rank() {
    let driver = cuda_for_test("two_staged_ranks_on_one_device_match_one_rank");
    let config = config(4, 2);
    let expected = greedy_run(&mut one_rank(&config, 21), 6);
    let weights = random_llama_weights(&config, 21, WeightDtype::F16);
    let options = CudaOptions { dtype: Dtype::F16, graphs: false };
    let mut split = CudaBackend::tensor_parallel(
        config.clone(),
        WeightSource::Host(&weights),
        LAYOUT,
        LIMITS,
        options,
        2,
        Transport::HostStaged,
    )
    .unwrap();
    assert_eq!(split.tensor_parallel_ranks(), 2);
    assert_eq!(split.config().num_heads, 4, "the engine sees the whole model");
    assert_eq!(split.executor().config().num_kv_heads, 1, "a rank holds its share of the KV heads");
    assert_ranks_agree(expected, greedy_run(&mut split, 6), &format!("host-staged on {driver}"));

    // A seed's weights are generated on the host and sharded: the same bits as uploading them.
    let mut generated = CudaBackend::tensor_parallel(
        config.clone(),
        WeightSource::RandomSeed(21),
        LAYOUT,
        LIMITS,
        options,
        2,
        Transport::HostStaged,
    )
    .unwrap();
    let mut plan = StepPlan::new(LIMITS, LAYOUT.block_size);
    plan.push_sequence(&prompt(3, 9), 0, &[5], true).unwrap();
    let (mut a, mut b) = (vec![f32::NAN; VOCAB], vec![f32::NAN; VOCAB]);
    split.execute(&plan, &mut a).unwrap();
    generated.execute(&plan, &mut b).unwrap();
    assert_eq!(a, b, "2 ranks from a seed against 2 ranks from the same weights uploaded");
}

#[test]
#[ignore = "needs 2 GPUs and NCCL: tools/gpu-check runs it where the machine has them"]
fn nccl_ranks_on_two_gpus_match_one_gpu() {
    let driver = cuda_for_test("nccl_ranks_on_two_gpus_match_one_gpu");
    let gpus = gpu_count().unwrap();
    assert!(!is_emulator() && gpus >= 2, "this test needs 2 GPUs and NCCL; {driver} counts {gpus}");
    let config = config(4, 2);
    let expected = greedy_run(&mut one_rank(&config, 23), 8);
    // Graphs on: every decode step after the first of its bucket replays a captured graph that
    // holds the ranks' NCCL all-reduces. Weights from the seed: the host-generated path.
    let options = CudaOptions { dtype: Dtype::F16, graphs: true };
    let mut split =
        CudaBackend::tensor_parallel(config, WeightSource::RandomSeed(23), LAYOUT, LIMITS, options, 2, Transport::Nccl)
            .unwrap();
    let placed: Vec<usize> = split.rank_executors().iter().map(|rank| rank.gpu().info.ordinal).collect();
    assert_eq!(placed, [0, 1], "rank r on GPU r");
    assert_ranks_agree(expected, greedy_run(&mut split, 8), &format!("NCCL on {driver}"));
}

#[test]
fn start_up_refuses_what_cannot_run() {
    cuda_for_test("start_up_refuses_what_cannot_run");
    let options = CudaOptions { dtype: Dtype::F16, graphs: false };
    let build = |config: ModelConfig, ranks: usize, transport: Transport, options: CudaOptions| {
        CudaBackend::tensor_parallel(config, WeightSource::RandomSeed(1), LAYOUT, LIMITS, options, ranks, transport)
            .err()
            .expect("refused")
    };
    let err = build(config(4, 2), 3, Transport::HostStaged, options);
    assert_eq!(
        err.to_string(),
        "--tensor-parallel 3 does not divide the model's attention heads (4); choose a divisor of 4"
    );
    let err = build(config(4, 2), 4, Transport::HostStaged, options);
    assert!(err.to_string().contains("does not divide the model's KV heads (2)"), "{err}");
    let err = build(config(4, 2), 2, Transport::HostStaged, CudaOptions { graphs: true, ..options });
    assert!(err.to_string().contains("CUDA graphs with the host-staged collective"), "{err}");
    // 8 ranks of 8 heads: more ranks than GPUs wherever this runs with fewer than 8.
    let gpus = gpu_count().unwrap();
    if gpus < 8 {
        let err = build(config(8, 8), 8, Transport::Nccl, options);
        assert!(matches!(err, CudaError::TooFewGpus { ranks: 8, gpus: g } if g == gpus), "{err}");
        assert!(err.to_string().contains(&format!("the CUDA driver counts {gpus}")), "{err}");
    } else {
        eprintln!("start_up_refuses_what_cannot_run: skipped the too-few-GPUs case: {gpus} GPUs hold 8 ranks");
    }
}
