"""The misuse catalogue of tests/test_misuse.py: one entry per kind of wrong input or wrong use.

Each entry builds its misuse on one tiny family (an :class:`Env`) with parameters drawn from
a :class:`Draw`, and either raises (the harness checks the error is clear) or returns a
:class:`Result`: what the call gave and the right answer from an independent computation
(bare HF forward, hand-written hook), or ``must_raise=True`` where no answer is right.
"""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import torch
from misuse_support import (
    FAMILIES6,
    PIXELS,
    WITH_PROCESSOR,
    Draw,
    Env,
    Misuse,
    Result,
    ablate,
    checkpoint_file,
    fitted,
    max_change,
    nested,
    nnsight_resumed,
    other_family,
    refused,
    refused_vs_bare,
    resumed,
    saved_bank,
    sweep_kl,
)

from hooks_mm import HookedMLLM, Image, Last, NonPad, Positions, zoo
from hooks_mm.analysis import accuracy, choice_score
from hooks_mm.interventions import (
    AttentionKnockout,
    CentroidBank,
    CentroidReplacement,
    Intervention,
    NeuronAblation,
    Patch,
    Skip,
    Steer,
)
from hooks_mm.selectors import Audio, Selector
from hooks_mm.sweep import answer_logprob, kl_to_clean, sweep


def dtype_cast(env: Env, d: Draw) -> Result:
    dtype = d.pick([torch.bfloat16, torch.float64])
    m = env.fresh()
    {torch.bfloat16: m.bfloat16, torch.float64: m.double}[dtype]()
    bare = zoo.build(env.family).model.to(dtype)
    cast = {k: v.to(dtype) if torch.is_floating_point(v) else v for k, v in env.inputs.items()}
    return Result(m(cast), env.bare(cast, model=bare))


def roundtrip(spec: Intervention) -> Result:
    back = Intervention.from_dict(json.loads(json.dumps(spec.to_dict())))
    return Result(back == spec, True)


def simple_spec(env: Env, d: Draw) -> Intervention:
    l = d.int(0, env.cfg.n_layers - 1)
    return d.pick(
        [
            NeuronAblation(layers=[l], neurons=[1, 2], positions=Image(), mode="scale", value=0.5),
            Steer(layers=l, vector=[0.5] * env.cfg.d_model, positions=Last()),
            AttentionKnockout(layers=l, queries=Last(), keys=Image()),
            Patch(layers=[l], component="resid_post", positions=Image() | Last()),
            Skip(layers=l, component="mlp", positions=Image()),
        ]
    )


def accuracy_with_ids(env: Env, d: Draw) -> Result:
    opts = [d.int(2, env.cfg.d_vocab - 1), d.int(2, env.cfg.d_vocab - 1)]
    last = env.bare()[torch.arange(2), env.model.layout(env.inputs).indices(Last())[:, 0]]
    answers = torch.tensor(opts)[last[:, opts].argmax(-1)]  # the model's own choice, as token ids: accuracy 1
    return Result(accuracy(env.model, [env.inputs], [answers], choice_score(opts)), 1.0)


def nan_tile(env: Env) -> Result:
    pv = env.inputs["pixel_values"].clone()
    pv.view(-1)[0] = float("nan")
    return refused_vs_bare(env, env.with_(pixel_values=pv))


def ids_with(env: Env, value: Any) -> Result:
    ids = env.inputs["input_ids"].clone()
    ids[0, -1] = value
    return refused_vs_bare(env, env.with_(input_ids=ids))


def ids_only(env: Env) -> Result:
    got = env.model(env.inputs["input_ids"])
    ids = {"input_ids": env.inputs["input_ids"]}
    if env.family == "anygpt":  # codes are the image: input_ids alone is a valid input
        return Result(got, env.bare(ids))
    return Result(got, env.bare(), must_raise=True)


def identity_of_batch(env: Env, d: Draw) -> Result:
    spec = NeuronAblation(layers=d.int(0, env.cfg.n_layers - 1), positions=Image())
    other = env.reversed_rows()
    with env.model.interventions(spec, env.inputs):
        got = env.model(other)
    return Result(got, env.model.run_with_interventions(other, spec))


def patch_in_generate(env: Env, d: Draw) -> Result:
    spec = Patch(layers=d.int(0, env.cfg.n_layers - 1), positions=NonPad())
    with env.model.interventions(spec, env.inputs, sources={"clean": env.inputs}):
        got = env.model.generate(env.inputs, max_new_tokens=2)
    with torch.no_grad():
        want = env.pair.bare.generate(**env.inputs, max_new_tokens=2, do_sample=False)
    return Result(got, want)


def patch_source_shape(env: Env, d: Draw) -> Result:
    per_row_media = all(env.rows(v) for v in env.inputs.values() if torch.is_tensor(v))
    if per_row_media and d.pick(["fewer rows", "longer rows"]) == "fewer rows":
        src = env.map_rows(lambda v: v[:1])
    else:
        src = env.map_rows(lambda v: torch.cat([torch.zeros_like(v[:, :1]), v], 1) if v.dim() > 1 else v)
    spec = Patch(layers=0, positions=Last())
    return refused(lambda: env.model.run_with_interventions(env.inputs, spec, sources={"clean": src}))


M = Misuse
CATALOGUE: list[Misuse] = [
    # ---------------------------------------------------------------- the model as an nn.Module
    M("dtype_cast_then_forward", dtype_cast, ("dtype",)),
    M(
        "parameters_and_state_dict",
        lambda e, d: Result(
            len(list(getattr(e.model, (k := d.pick(["state_dict", "named_parameters", "parameters"])))())),
            len(list(getattr(e.pair.bare, k)())),
        ),
        ("parameters",),
    ),
    M(
        "requires_grad_false",
        lambda e, d: Result(sum(p.requires_grad for p in e.fresh().requires_grad_(False).hf_model.parameters()), 0),
        ("requires_grad",),
    ),
    M("train_mode", lambda e, d: Result(e.fresh().train().hf_model.training, True), ("train",)),
    M(
        "cuda_without_gpu",
        lambda e, d: (
            refused(lambda: e.fresh().cuda())
            if not torch.cuda.is_available()
            else Result(e.fresh().cuda()(e.inputs).cpu(), e.bare())
        ),
        ("cuda",),
    ),
    M("two_wrappers_nested", lambda e, d: nested(e, d, True), ("nested", "forward", "hook", "wrapper")),
    M("forward_inside_a_hook", lambda e, d: nested(e, d, False), ("nested", "forward", "hook")),
    # ---------------------------------------------------------------- forward arguments and inputs
    M(
        "return_type_typo",
        lambda e, d: refused(lambda: e.model(e.inputs, return_type=d.pick(["logit", "Logits", "loss ", "outputs"]))),
        ("return_type",),
    ),
    M("stop_at_layer_float", lambda e, d: refused(lambda: e.model(e.inputs, stop_at_layer=0.5)), ("stop_at_layer",)),
    M(
        "fwd_hooks_not_a_list",
        lambda e, d: refused(
            lambda: e.model.run_with_hooks(e.inputs, fwd_hooks=("blocks.0.hook_resid_post", lambda x, hook: x))
        ),
        ("fwd_hooks",),
    ),
    M(
        "cache_name_typo",
        lambda e, d: refused(lambda: e.model.run_with_cache(e.inputs, names_filter=["blocks.0.hook_resid_psot"])),
        ("hook_resid_psot",),
    ),
    M(
        "missing_pixel_values",
        lambda e, d: refused_vs_bare(e, e.with_(pixel_values=None)),
        ("pixel_values", "image"),
        PIXELS,
    ),
    M("input_ids_only", lambda e, d: ids_only(e), ("pixel_values", "image")),
    M(
        "uint8_pixel_values",
        lambda e, d: refused_vs_bare(
            e, e.with_(pixel_values=(e.inputs["pixel_values"] * 127 + 128).clamp(0, 255).to(torch.uint8))
        ),
        ("uint8", "dtype"),
        PIXELS,
    ),
    M(
        "float64_pixel_values",
        lambda e, d: Result(e.model(e.with_(pixel_values=e.inputs["pixel_values"].double())), e.bare()),
        ("pixel_values",),
        PIXELS,
    ),
    M("nan_in_pixel_values", lambda e, d: nan_tile(e), ("nan", "finite"), PIXELS),
    M(
        "pixel_values_other_size",
        lambda e, d: refused(
            lambda: e.model(
                e.with_(pixel_values=torch.nn.functional.interpolate(e.inputs["pixel_values"], scale_factor=0.5))
            )
        ),
        ("pixel_values", "size", "features"),
        ("llava", "gemma3"),
    ),
    M(
        "extra_image",
        lambda e, d: refused(
            lambda: e.model(e.with_(pixel_values=torch.cat([e.inputs["pixel_values"], e.inputs["pixel_values"][:1]])))
        ),
        ("image",),
        ("llava", "gemma3", "idefics3"),
    ),
    M(
        "float_input_ids",
        lambda e, d: refused(lambda: e.model(e.with_(input_ids=e.inputs["input_ids"].float()))),
        ("input_ids",),
    ),
    M(
        "int32_input_ids",
        lambda e, d: Result(e.model(e.with_(input_ids=e.inputs["input_ids"].int())), e.bare()),
        ("input_ids",),
    ),
    M(
        "ids_at_or_above_vocab",
        lambda e, d: ids_with(e, e.model.hf_model.get_input_embeddings().num_embeddings + d.int(0, 5)),
        ("input_ids", "vocab"),
    ),
    M("negative_ids", lambda e, d: ids_with(e, -d.int(1, 3)), ("input_ids", "token id")),
    M(
        "empty_batch",
        lambda e, d: refused(lambda: e.model(e.map_rows(lambda v: v[:0], lambda k, v: v[:0]))),
        ("empty", "batch"),
    ),
    M(
        "empty_sequence",
        lambda e, d: refused(lambda: e.model({k: v[:, :0] for k, v in e.inputs.items() if e.rows(v) and v.dim() > 1})),
        ("empty", "sequence", "input_ids"),
    ),
    M("meta_tensors", lambda e, d: refused(lambda: e.model({k: v.to("meta") for k, v in e.inputs.items()})), ("meta",)),
    M(
        "inputs_embeds_only",
        lambda e, d: Result(
            e.model(
                {
                    "inputs_embeds": (emb := e.model.hf_model.get_input_embeddings()(e.inputs["input_ids"]).detach()),
                    "attention_mask": e.inputs["attention_mask"],
                }
            ),
            e.bare({"inputs_embeds": emb, "attention_mask": e.inputs["attention_mask"]}),
        ),
        ("inputs_embeds",),
        ("anygpt",),
    ),
    M(
        "to_inputs_empty_list",
        lambda e, d: refused(lambda: e.model.to_inputs([])),
        ("empty", "prompt", "text"),
        WITH_PROCESSOR,
    ),
    M(
        "unknown_model_name",
        lambda e, d: refused(
            lambda: HookedMLLM.from_pretrained(d.pick([f"tiny-{e.family}x", "toy-llavaa", "someorg/no-such-model"]))
        ),
        ("tiny-", "toy-llavaa", "someorg/"),
    ),
    M("batch_identity_in_interventions", identity_of_batch, ("batch", "inputs")),
    # ---------------------------------------------------------------- intervention specs
    M(
        "steer_without_vector",
        lambda e, d: refused(
            lambda: e.model.run_with_interventions(e.inputs, d.pick([Steer(0, 1.0), Steer(layers=0)]))
        ),
        ("vector",),
    ),
    M(
        "steer_wrong_width",
        lambda e, d: refused(
            lambda: e.model.run_with_interventions(e.inputs, Steer(0, [1.0] * (e.cfg.d_model + d.pick([-1, 1, 7]))))
        ),
        ("vector",),
    ),
    M(
        "steer_nan_vector",
        lambda e, d: refused(
            lambda: e.model.run_with_interventions(e.inputs, Steer(0, [d.pick([math.nan, math.inf])] * e.cfg.d_model))
        ),
        ("vector",),
    ),
    M("set_value_nan", lambda e, d: ablate(e, d, mode="set", value=math.nan), ("value",)),
    M("layers_float", lambda e, d: ablate(e, d, layers=d.pick([0.5, 1.0])), ("layers",)),
    M("layers_str", lambda e, d: ablate(e, d, layers=d.pick(["0", "1"])), ("layers",)),
    M("layers_bool", lambda e, d: ablate(e, d, layers=d.pick([True, False])), ("layers",)),
    M(
        "layers_out_of_range",
        lambda e, d: ablate(e, d, layers=d.pick([e.cfg.n_layers + d.int(0, 3), -e.cfg.n_layers - 1 - d.int(0, 3)])),
        ("layers",),
    ),
    M(
        "layers_numpy_int",
        lambda e, d: Result(
            e.model.run_with_interventions(e.inputs, Skip(layers=np.int64(0))),
            e.model.run_with_interventions(e.inputs, Skip(layers=0)),
        ),
        ("layers",),
    ),
    M("neurons_out_of_range_mlp_post", lambda e, d: ablate(e, d, neurons=[e.cfg.d_mlp + d.int(0, 5)]), ("neurons",)),
    M(
        "neurons_out_of_range_other_hook",
        lambda e, d: ablate(
            e,
            d,
            hook=(h := d.pick(["hook_resid_post", "hook_mlp_out", "ln2.hook_normalized", "mlp.hook_pre"])),
            neurons=[e.nonzero_d(h) + d.int(0, 5)],
        ),
        ("neurons",),
    ),
    M("neurons_not_integers", lambda e, d: ablate(e, d, neurons=[d.pick([1.5, "3", True])]), ("neurons",)),
    M("neurons_empty", lambda e, d: ablate(e, d, neurons=[]), ("neurons",)),
    M("unknown_mode", lambda e, d: ablate(e, d, mode=d.pick(["zeros", "Mean", "resampled"])), ("mode",)),
    M(
        "unknown_hook_template",
        lambda e, d: refused(
            lambda: e.model.run_with_interventions(
                e.inputs, Steer(0, [0.0] * e.cfg.d_model, hook=d.pick(["hook_resid_psot", "resid_post", "mlp.post"]))
            )
        ),
        ("hook",),
    ),
    M(
        "patch_unknown_component",
        lambda e, d: refused(
            lambda: e.model.run_with_interventions(
                e.inputs, Patch(layers=0, component=d.pick(["resid", "mlp", "attn"])), sources={"clean": e.inputs}
            )
        ),
        ("component",),
    ),
    M("resample_without_source", lambda e, d: ablate(e, d, mode="resample"), ("source",)),
    M(
        "unknown_selector_name",
        lambda e, d: refused(lambda: Selector.from_dict({"selector": d.pick(["Imagee", "image"])})),
        ("selector", "Imagee", "image"),
    ),
    M("positions_as_string", lambda e, d: ablate(e, d, positions=d.pick(["image", "Image()"])), ("positions",)),
    M("positions_select_nothing", lambda e, d: ablate(e, d, positions=Audio()), ("positions",)),
    M(
        "positions_out_of_range",
        lambda e, d: ablate(e, d, positions=Positions([e.inputs["input_ids"].shape[1] + 2])),
        ("positions", "range"),
    ),
    M(
        "knockout_heads_out_of_range",
        lambda e, d: refused(
            lambda: e.model.run_with_interventions(
                e.inputs,
                AttentionKnockout(layers=0, queries=Last(), keys=NonPad(), heads=[e.cfg.n_heads + d.int(0, 3)]),
            )
        ),
        ("heads",),
    ),
    M(
        "from_dict_json_string",
        # JSON text is accepted: it must give the very spec back
        lambda e, d: (lambda s: Result(Intervention.from_dict(json.dumps(s.to_dict())) == s, True))(simple_spec(e, d)),
        ("from_dict", "json", "dict"),
    ),
    M("roundtrip_equality", lambda e, d: roundtrip(simple_spec(e, d)), ("==",)),
    M(
        "roundtrip_equality_tensor_fields",
        lambda e, d: roundtrip(
            d.pick(
                [
                    CentroidReplacement(saved_bank(e), NonPad()),
                    NeuronAblation(layers=0, mode="mean", means=fitted("means", e.family)),
                ]
            )
        ),
        ("==",),
    ),
    M(
        "bank_load_equality",
        lambda e, d: Result(CentroidBank.load(saved_bank(e).meta["path"]) == saved_bank(e), True),
        ("==",),
    ),
    M(
        "neuron_means_from_another_model",
        lambda e, d: ablate(e, d, mode="mean", neurons=[1], means=fitted("means", other_family(e, "ne", "d_mlp"))),
        ("means", "NeuronMeans"),
    ),
    M(
        "centroid_bank_from_another_model",
        lambda e, d: refused(
            lambda: e.model.run_with_interventions(
                e.inputs, CentroidReplacement(fitted("bank", other_family(e, "eq", "d_model")), NonPad())
            )
        ),
        ("bank",),
    ),
    M(
        "centroid_bank_other_width",
        lambda e, d: refused(
            lambda: e.model.run_with_interventions(
                e.inputs, CentroidReplacement(fitted("bank", other_family(e, "ne", "d_model")), NonPad())
            )
        ),
        ("bank",),
    ),
    M("patch_source_of_another_shape", patch_source_shape, ("source",)),
    M("patch_during_generation", patch_in_generate, ("generat",)),
    # ---------------------------------------------------------------- sweeps and metrics
    M(
        "sweep_empty_config_list",
        lambda e, d: refused(lambda: sweep(e.model, e.inputs, [], kl_to_clean(e.model, e.inputs), progress=False)),
        ("config",),
    ),
    M(
        "sweep_dict_as_config",
        lambda e, d: refused(
            lambda: sweep(
                e.model,
                e.inputs,
                [d.pick([NeuronAblation(layers=0, neurons=[1]).to_dict(), {"layers": 0}])],
                kl_to_clean(e.model, e.inputs),
                progress=False,
            )
        ),
        ("config", "dict"),
    ),
    M(
        "metric_returns_none",
        lambda e, d: refused(lambda: sweep_kl(e, e.model, None, lambda logits: None)),
        ("metric",),
    ),
    M(
        "metric_returns_2d",
        lambda e, d: refused(lambda: sweep_kl(e, e.model, None, lambda logits: logits[:, -1, :2])),
        ("metric",),
    ),
    M(
        "targets_wrong_length",
        lambda e, d: refused(
            lambda: sweep_kl(e, e.model, None, answer_logprob(e.model, e.inputs, targets=[1] * d.pick([3, 5])))
        ),
        ("targets",),
    ),
    M(
        "targets_out_of_vocab",
        lambda e, d: refused(
            lambda: sweep_kl(
                e, e.model, None, answer_logprob(e.model, e.inputs, targets=[e.cfg.d_vocab + d.int(0, 3)] * 2)
            )
        ),
        ("targets",),
    ),
    M("checkpoint_corrupt", lambda e, d: checkpoint_file(e, "corrupt"), ("sweep.pt",)),
    M("checkpoint_truncated", lambda e, d: checkpoint_file(e, "truncated"), ("sweep.pt",)),
    M("checkpoint_empty", lambda e, d: checkpoint_file(e, "empty"), ("sweep.pt",)),
    M(
        "checkpoint_of_another_metric",
        lambda e, d: resumed(e, (e.model, None), (e.model, max_change(e, e.model))),
        ("checkpoint",),
    ),
    M(
        "checkpoint_of_another_model",
        lambda e, d: resumed(e, (e.model, max_change(e, e.model)), (m := e.fresh(seed=1), max_change(e, m))),
        ("checkpoint",),
    ),
    M("checkpoint_of_another_metric_nnsight", lambda e, d: nnsight_resumed(e), ("checkpoint",), WITH_PROCESSOR),
    M(
        "nnsight_sweep_without_processor",
        lambda e, d: nnsight_resumed(e, resume=False),
        ("processor", "tokenizer"),
        tuple(f for f in FAMILIES6 if f not in WITH_PROCESSOR),
    ),
    # ---------------------------------------------------------------- analyses
    M("accuracy_with_token_ids", accuracy_with_ids, ("answers",)),
    M(
        "accuracy_answers_wrong_length",
        lambda e, d: refused(
            lambda: accuracy(e.model, [e.inputs], [torch.zeros(3, dtype=torch.long)], choice_score([2, 3]))
        ),
        ("answers",),
    ),
]
