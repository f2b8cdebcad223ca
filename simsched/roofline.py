"""Roofline step times for hardware nobody has measured: ``StepTime`` coefficients and the KV
capacity computed from a model's shape and a GPU's datasheet figures (issue 17 item 4).

Each term of the step form (REFERENCE §9) is charged to the resource that bounds it:

- ``c0``     reading the weights once per step: streamed weight bytes / bandwidth;
- ``c_pf``   a prefill token's matmuls: 2 FLOPs per linear-layer parameter / FLOP rate;
- ``c_dec``  a decoding sequence's matmuls, the LM head included (one row of logits each);
- ``c_ctx``  reading one context token's K and V in every layer: KV bytes per token / bandwidth;
- ``c_attn`` causal prefill attention, 4·layers·heads·head_dim FLOPs per (query, key) pair
             (QKᵀ and AV), times Σ(n·s + n²/2) over the step's prefill chunks;
- ``cpu``    a per-step host time the GPU does not hide (an assumption, see ``DEFAULT_CPU_S``).

The terms are *added*: the form is linear, so a step is charged its weight reads and its GEMM
FLOPs one after the other. A real GEMM overlaps the two, so near the ridge point (decode
batches or prefill chunks of a few hundred tokens) this over-estimates the ideal
max(memory, compute) roofline; far from it the smaller term is negligible. The efficiencies
scale the datasheet peaks to what kernels reach; their defaults are assumptions, not our
measurements. Tensor parallelism divides weights, FLOPs and KV over ``tensor_parallel`` GPUs
and ignores the all-reduces, so it is optimistic there.

Datasheet capacities ("80 GB") are binary (GiB); bandwidths and FLOP rates are decimal.
Pure Python and numpy: no torch, nothing downloaded.
"""
from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from simsched.errors import ConfigError, check_choice, check_positive, check_probability
from simsched.latency import StepTime

GIB = 2**30

# BLIS (inference-sim) ships these for its roofline (docs/design/roofline.md: BwEffConstant
# 0.72, mfuPrefill 0.65, TOverheadMicros 500): assumptions carried over, not measured here.
DEFAULT_BANDWIDTH_EFFICIENCY = 0.72
DEFAULT_FLOPS_EFFICIENCY = 0.65
# Host time per step: the low end of the 0.5–5 ms that studies of vLLM report (REFERENCE §9).
DEFAULT_CPU_S = 0.0005
# vLLM's default share of GPU memory for weights + activations + KV cache.
DEFAULT_GPU_MEMORY_UTILIZATION = 0.9
# Activations, CUDA graphs and the non-torch context, per GPU (vLLM measures this in a
# profiling run; 2 GiB is an assumption).
DEFAULT_RESERVE_GIB = 2.0


@dataclass(frozen=True)
class GpuSpec:
    """A GPU's datasheet figures: HBM/GDDR bandwidth (bytes/s), dense BF16 tensor FLOP/s (no
    sparsity; FP32 accumulate), memory (GiB)."""

    label: str
    bandwidth_bytes_s: float
    bf16_flops: float
    memory_gib: float
    source: str


@dataclass(frozen=True)
class ModelShape:
    """A dense decoder-only transformer (Llama/Qwen family: SwiGLU MLP, RMSNorm, GQA)."""

    label: str
    num_layers: int
    hidden_size: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    vocab_size: int
    tie_embeddings: bool
    attention_bias: bool  # q, k, v projection biases (Qwen2)
    qk_norm: bool         # per-head RMSNorm on q and k (Qwen3)
    source: str
    dtype_bytes: int = 2      # bf16 weights
    kv_dtype_bytes: int = 2   # bf16 KV cache

    @property
    def linear_params_per_layer(self) -> int:
        """Parameters a token multiplies in one layer (projections and MLP, no norms)."""
        h, q, kv = self.hidden_size, self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim
        bias = (q + 2 * kv) if self.attention_bias else 0
        return h * q + 2 * h * kv + q * h + 3 * h * self.intermediate_size + bias

    @property
    def linear_params(self) -> int:
        return self.num_layers * self.linear_params_per_layer

    @property
    def embedding_params(self) -> int:
        return self.vocab_size * self.hidden_size

    @property
    def num_params(self) -> int:
        """All parameters, as transformers counts them (tests check this against it)."""
        norms = 2 * self.hidden_size + (2 * self.head_dim if self.qk_norm else 0)
        lm_head = 0 if self.tie_embeddings else self.embedding_params
        return (self.embedding_params + lm_head + self.num_layers * (self.linear_params_per_layer + norms)
                + self.hidden_size)

    @property
    def weight_bytes(self) -> int:
        """Bytes of weights resident on the GPU(s)."""
        return self.num_params * self.dtype_bytes

    @property
    def streamed_weight_bytes(self) -> int:
        """Bytes read per step: every weight, except an untied input embedding (a lookup reads
        only the rows of the step's tokens)."""
        lookup = 0 if self.tie_embeddings else self.embedding_params
        return (self.num_params - lookup) * self.dtype_bytes

    @property
    def kv_bytes_per_token(self) -> int:
        """K and V of one token in every layer."""
        return 2 * self.num_layers * self.num_kv_heads * self.head_dim * self.kv_dtype_bytes

    @property
    def attention_flops_per_pair(self) -> int:
        """FLOPs of one (query, key) pair over all layers and heads: QKᵀ and AV, 2 each per dim."""
        return 4 * self.num_layers * self.num_heads * self.head_dim


GPUS = MappingProxyType({
    "h100": GpuSpec("NVIDIA H100 SXM5 80GB", 3.35e12, 989.5e12, 80,
                    "NVIDIA H100 Tensor Core GPU datasheet, H100 SXM column: 80 GB HBM3, 3.35 TB/s, "
                    "BF16 Tensor Core 1,979 TFLOPS with sparsity (989.5 dense)"),
    "h200": GpuSpec("NVIDIA H200 SXM 141GB", 4.8e12, 989.5e12, 141,
                    "NVIDIA H200 Tensor Core GPU datasheet, H200 SXM column: 141 GB HBM3e, 4.8 TB/s, "
                    "BF16 Tensor Core 1,979 TFLOPS with sparsity (989.5 dense)"),
    "a100_80gb": GpuSpec("NVIDIA A100 80GB SXM", 2.039e12, 312e12, 80,
                         "NVIDIA A100 Tensor Core GPU datasheet, A100 80GB SXM column: 2,039 GB/s HBM2e, "
                         "BF16 Tensor Core 312 TFLOPS dense (624 with sparsity)"),
    "l40s": GpuSpec("NVIDIA L40S", 0.864e12, 362.05e12, 48,
                    "NVIDIA L40S datasheet: 48 GB GDDR6, 864 GB/s, BF16 Tensor Core 362.05 TFLOPS dense "
                    "(733 with sparsity)"),
    "rtx_4090": GpuSpec("NVIDIA GeForce RTX 4090", 1.008e12, 165.2e12, 24,
                        "NVIDIA Ada GPU architecture whitepaper, RTX 4090: 24 GB GDDR6X, 1,008 GB/s, "
                        "FP16/BF16 tensor 165.2 TFLOPS dense with FP32 accumulate (330.3 with FP16 accumulate)"),
    "rtx_pro_6000": GpuSpec("NVIDIA RTX PRO 6000 Blackwell Workstation Edition", 1.792e12, 503.8e12, 96,
                            "NVIDIA RTX PRO 6000 Blackwell datasheet and RTX Blackwell architecture whitepaper: "
                            "96 GB GDDR7, 1,792 GB/s, FP16/BF16 tensor 503.8 TFLOPS dense with FP32 accumulate "
                            "(4,000 AI TOPS = FP4 with sparsity)"),
})

MODELS = MappingProxyType({
    "llama3_1_8b": ModelShape("Llama-3.1-8B", num_layers=32, hidden_size=4096, num_heads=32, num_kv_heads=8,
                              head_dim=128, intermediate_size=14336, vocab_size=128256, tie_embeddings=False,
                              attention_bias=False, qk_norm=False,
                              source="meta-llama/Llama-3.1-8B config.json (8.03B parameters)"),
    "qwen2_5_1_5b": ModelShape("Qwen2.5-1.5B", num_layers=28, hidden_size=1536, num_heads=12, num_kv_heads=2,
                               head_dim=128, intermediate_size=8960, vocab_size=151936, tie_embeddings=True,
                               attention_bias=True, qk_norm=False,
                               source="Qwen/Qwen2.5-1.5B config.json (1.54B parameters)"),
    "qwen3_32b": ModelShape("Qwen3-32B", num_layers=64, hidden_size=5120, num_heads=64, num_kv_heads=8,
                            head_dim=128, intermediate_size=25600, vocab_size=151936, tie_embeddings=False,
                            attention_bias=False, qk_norm=True,
                            source="Qwen/Qwen3-32B config.json (32.8B parameters)"),
    "llama3_70b": ModelShape("Llama-3-70B", num_layers=80, hidden_size=8192, num_heads=64, num_kv_heads=8,
                             head_dim=128, intermediate_size=28672, vocab_size=128256, tie_embeddings=False,
                             attention_bias=False, qk_norm=False,
                             source="meta-llama/Meta-Llama-3-70B config.json (70.6B parameters)"),
})


def step_time_for(gpu: GpuSpec, shape: ModelShape, *, tensor_parallel: int = 1,
                  bandwidth_efficiency: float = DEFAULT_BANDWIDTH_EFFICIENCY,
                  flops_efficiency: float = DEFAULT_FLOPS_EFFICIENCY, cpu_s: float = DEFAULT_CPU_S,
                  name: str = "roofline") -> StepTime:
    """The roofline ``StepTime`` of ``shape`` on ``tensor_parallel`` GPUs of kind ``gpu``."""
    bw = gpu.bandwidth_bytes_s * bandwidth_efficiency * tensor_parallel
    flops = gpu.bf16_flops * flops_efficiency * tensor_parallel
    source = (f"roofline: {shape.label} on {tensor_parallel}x {gpu.label}; bandwidth x{bandwidth_efficiency:g}, "
              f"FLOP/s x{flops_efficiency:g}, cpu {cpu_s * 1e3:g} ms/step (datasheet figures, not a measurement)")
    return StepTime(c0_s=shape.streamed_weight_bytes / bw,
                    c_pf_s=2.0 * shape.linear_params / flops,
                    c_dec_s=2.0 * (shape.linear_params + shape.embedding_params) / flops,
                    c_ctx_s=shape.kv_bytes_per_token / bw,
                    c_attn_s=shape.attention_flops_per_pair / flops,
                    cpu_s=cpu_s, name=name, source=source)


def kv_capacity_tokens_for(gpu: GpuSpec, shape: ModelShape, *, tensor_parallel: int = 1,
                           gpu_memory_utilization: float = DEFAULT_GPU_MEMORY_UTILIZATION,
                           reserve_gib: float = DEFAULT_RESERVE_GIB) -> int:
    """Tokens of KV cache a replica holds, as vLLM sizes it: the utilised share of memory minus
    the weights and a per-GPU reserve, divided by the KV bytes of one token. ≤ 0: no fit."""
    usable = tensor_parallel * (gpu.memory_gib * gpu_memory_utilization - reserve_gib) * GIB
    return int((usable - shape.weight_bytes) // shape.kv_bytes_per_token)


@dataclass(frozen=True)
class Roofline:
    """``latency_model=roofline latency_model.gpu=h100 latency_model.model=llama3_1_8b``: the
    roofline ``StepTime`` of a preset model shape on a preset GPU. ``step_model`` is that
    StepTime (what an iteration-level engine uses); ``batch_time`` integrates it for
    run-to-completion batches; ``kv_capacity_tokens`` is the matching KV cache (``gpus=roofline``
    reads it)."""

    gpu: str = "h100"
    model: str = "llama3_1_8b"
    tensor_parallel: int = 1
    bandwidth_efficiency: float = DEFAULT_BANDWIDTH_EFFICIENCY
    flops_efficiency: float = DEFAULT_FLOPS_EFFICIENCY
    cpu_s: float = DEFAULT_CPU_S
    gpu_memory_utilization: float = DEFAULT_GPU_MEMORY_UTILIZATION
    reserve_gib: float = DEFAULT_RESERVE_GIB
    name: str = "roofline"

    def __post_init__(self) -> None:
        check_choice("gpu", self.gpu, tuple(GPUS))
        check_choice("model", self.model, tuple(MODELS))
        check_positive("tensor_parallel", self.tensor_parallel, integer=True)
        for key in ("bandwidth_efficiency", "flops_efficiency", "gpu_memory_utilization"):
            check_positive(key, getattr(self, key))
            check_probability(key, getattr(self, key))
        check_positive("cpu_s", self.cpu_s, allow_zero=True)
        check_positive("reserve_gib", self.reserve_gib, allow_zero=True)
        gpu, shape = GPUS[self.gpu], MODELS[self.model]
        kv = kv_capacity_tokens_for(gpu, shape, tensor_parallel=self.tensor_parallel,
                                    gpu_memory_utilization=self.gpu_memory_utilization,
                                    reserve_gib=self.reserve_gib)
        if kv <= 0:
            have = self.tensor_parallel * (gpu.memory_gib * self.gpu_memory_utilization - self.reserve_gib)
            raise ConfigError("model", f"{shape.label} needs {shape.weight_bytes / GIB:.1f} GiB of weights but "
                                       f"{self.tensor_parallel}x {self.gpu} leave {have:.1f} GiB (gpu_memory_utilization "
                                       f"{self.gpu_memory_utilization:g}, reserve {self.reserve_gib:g} GiB per GPU); "
                                       f"raise tensor_parallel", self.model)
        # Derived state, not configuration (like Calibrated.model).
        object.__setattr__(self, "kv_capacity_tokens", kv)
        object.__setattr__(self, "step_model", step_time_for(
            gpu, shape, tensor_parallel=int(self.tensor_parallel), bandwidth_efficiency=self.bandwidth_efficiency,
            flops_efficiency=self.flops_efficiency, cpu_s=self.cpu_s, name=self.name))

    def step_time(self, prefill_tokens: Any, decode_seqs: Any, context_tokens: Any, attn_tokens2: Any = 0.0) -> Any:
        return self.step_model.step_time(prefill_tokens, decode_seqs, context_tokens, attn_tokens2)

    def batch_time(self, b: Any, L: Any, prompt_sum: Any) -> Any:
        return self.step_model.batch_time(b, L, prompt_sum)


def kv_capacity_resolver(latency_model: Any) -> int:
    """``${simsched.roofline_kv:${latency_model}}`` in ``conf/gpus/roofline.yaml``: the KV
    capacity of the configured roofline latency model (validated like the model itself)."""
    node = dict(latency_model) if latency_model is not None else {}
    if node.get("_target_") != f"{__name__}.Roofline":
        raise ConfigError("gpus.kv_capacity_tokens", "gpus=roofline takes its KV capacity from "
                                                     "latency_model=roofline; choose that latency model too")
    keys = ("gpu", "model", "tensor_parallel", "gpu_memory_utilization", "reserve_gib")
    try:
        return Roofline(**{k: node[k] for k in keys if k in node}).kv_capacity_tokens
    except ConfigError as exc:
        raise exc.under("latency_model") from None
