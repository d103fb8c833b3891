"""A transformers generation engine with request batching; plain Python, no Ray.

The Serve deployment, tests and the batch-extraction job all use it the same way:
``engine.prepare(request)`` (or ``prepare_prompt``) checks and tokenises one request (raising
``RequestError`` for something the caller got wrong), ``engine.generate_prepared(items)`` runs
them in as few left-padded ``generate`` calls as their parameters and adapters allow;
``generate_batch`` does both.

Every row of a batch is watched after each new token (``RowState``): a row stops on its own
at EOS, at its own ``max_new_tokens``, at a stop string, or when its caller went away, and its
new text can be handed out as it is made (``RowHooks.on_text``) — so streaming, stop strings and
cancellation work inside shared forward passes. ``continuous.ContinuousBatcher`` drives the same
``RowState`` per row from its own decode loop, so rows join and leave a running batch.

Loading (``load_model``): fp32 / fp16 / bf16; ``quantization="int8"`` is bitsandbytes 8-bit on
CUDA and torch's dynamic int8 (``torch.ao.quantization.quantize_dynamic``) on CPU;
``device_map``/``max_memory`` spread one model over several GPUs (KnowLM's ``--allocate``).
LoRA adapters (peft) are loaded on first use, at most ``max_loras`` at a time (least recently
used goes first), and only from the directories given at construction.
"""

from __future__ import annotations

import copy
import logging
import threading
import warnings
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from knowlm_ray.alpaca import build_prompt
from knowlm_ray.generation.errors import CONTEXT_LENGTH_EXCEEDED, RequestError, UnknownModelError
from knowlm_ray.generation.params import GenerateRequest, GenerationParams
from knowlm_ray.generation.penalties import penalty_processors

log = logging.getLogger("knowlm_ray.generation")

DTYPES = ("float32", "float16", "bfloat16")
QUANTIZATIONS = ("none", "int8")
DEVICES = ("auto", "cpu", "cuda")


class EngineConfigError(ValueError):
    """Device / precision / adapter settings that cannot work together (raised before loading)."""


@dataclass(frozen=True)
class Prepared:
    input_ids: tuple[int, ...]
    params: GenerationParams
    max_new_tokens: int  # max_tokens, cut to the room the context leaves after the prompt
    stop: tuple[str, ...] = ()  # the text is cut before the first of these; finish_reason "stop"
    adapter: str | None = None  # a configured LoRA adapter's name; None: the base model
    constraint: Any = None  # constraints.Compiled: the answer's grammar (constrained decoding)


@dataclass(frozen=True)
class GenerationResult:
    text: str
    num_output_tokens: int  # generated tokens, EOS included when produced
    num_prompt_tokens: int
    finish_reason: str  # "stop" (EOS or a stop string), "length", or "cancelled"


class RowHooks(Protocol):
    """Per-row callbacks, by the row's index in the list given to ``generate_prepared``.

    Called from the generating thread after every new token; keep them cheap and thread-safe.
    """

    def wants_text(self, i: int) -> bool: ...  # stream this row's text as it is made

    def on_text(self, i: int, delta: str) -> None: ...  # concatenated deltas == result.text

    def cancelled(self, i: int) -> bool: ...  # True: stop this row now (finish_reason "cancelled")


def _group_key(p: Prepared) -> tuple:
    """Requests sharing this key go into one ``generate`` call.

    Greedy and sampled rows stop on their own (EOS, their own max_new_tokens, stop strings),
    which is what a row of its own would have produced; beam search ranks whole hypotheses, so
    its length budget must match exactly. Rows for different adapters never share a call.
    """
    q = p.params
    sampling = q.sampling
    return (
        p.adapter or "",
        sampling,
        q.temperature if sampling else None,
        q.top_p if sampling else None,
        q.top_k if sampling else None,
        q.num_beams,
        q.repetition_penalty,
        q.presence_penalty,
        q.frequency_penalty,
        p.max_new_tokens if q.num_beams > 1 else None,
    )


# ------------------------------------------------------------------------------------ loading
def resolve_device(device: str) -> str:
    import torch

    kind, _, index = device.partition(":")
    if kind not in DEVICES or (index and (kind != "cuda" or not index.isdigit())):
        raise EngineConfigError(f"device must be one of {', '.join(DEVICES)} (or cuda:N), got {device!r}")
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if kind == "cuda" and not torch.cuda.is_available():
        raise EngineConfigError(
            "device 'cuda' was asked for but CUDA is not available on this machine (use device: auto or cpu)"
        )
    return device


def check_engine_options(
    device: str, dtype: str, quantization: str, device_map: Any = None, has_loras: bool = False
) -> None:
    """Fail before loading anything when the combination cannot work; ``device`` is resolved."""
    device = device.partition(":")[0]
    if dtype not in DTYPES:
        raise EngineConfigError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    if quantization not in QUANTIZATIONS:
        raise EngineConfigError(f"quantization must be one of {', '.join(QUANTIZATIONS)}, got {quantization!r}")
    if device == "cpu" and dtype == "float16":
        # A choice, not a limitation of torch: fp16 matmuls on CPU are slow and some ops are
        # missing, so a config written for a GPU fails here with a clear reason instead.
        raise EngineConfigError("dtype float16 needs a GPU; on CPU use float32 (default) or bfloat16")
    if quantization == "int8" and device == "cpu":
        if dtype != "float32":
            raise EngineConfigError(
                "quantization int8 on CPU (torch dynamic int8) computes in float32: set dtype float32"
            )
        if has_loras:
            raise EngineConfigError(
                "LoRA adapters cannot sit on torch's dynamic int8 layers (CPU int8): "
                "merge the adapter into the model, or serve without quantization"
            )
        if device_map is not None:
            raise EngineConfigError("device_map is for GPUs; CPU int8 loads the whole model on the CPU")
    if quantization == "int8" and device == "cuda":
        import importlib.util

        if importlib.util.find_spec("bitsandbytes") is None:
            raise EngineConfigError(
                "quantization int8 on CUDA uses bitsandbytes, which is not installed: pip install 'knowlm-ray[quant]'"
            )


def load_model(
    path: Path,
    device: str,
    dtype: str,
    quantization: str = "none",
    device_map: str | dict | None = None,
    max_memory: Mapping | None = None,
    trust_remote_code: bool = False,
):
    """The model, on its device(s), in eval mode; ``device`` must be resolved (cpu/cuda)."""
    import torch
    from transformers import AutoModelForCausalLM

    kwargs: dict[str, Any] = {"dtype": getattr(torch, dtype), "trust_remote_code": trust_remote_code}
    if quantization == "int8" and device.startswith("cuda"):
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(load_in_8bit=True)
        kwargs["device_map"] = device_map if device_map is not None else {"": int(device.partition(":")[2] or 0)}
    elif device_map is not None:
        kwargs["device_map"] = device_map
    if max_memory and "device_map" in kwargs:
        kwargs["max_memory"] = dict(max_memory)
    model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    if "device_map" not in kwargs:
        model = model.to(device)
    if quantization == "int8" and device == "cpu":
        with warnings.catch_warnings():  # "torch.ao.quantization is deprecated": still the CPU path in 2.13
            warnings.simplefilter("ignore")
            # in place: a copy would leave the fp32 weights resident beside the int8 ones
            model = torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8, inplace=True)
    return model.eval()


# ------------------------------------------------------------------------------------ engine
class GenerationEngine:
    """An HF causal LM (fp32 on CPU by default) answering KnowLM alpaca and raw prompts."""

    def __init__(
        self,
        model_dir: str | Path,
        device: str = "cpu",
        dtype: str = "float32",
        num_threads: int | None = None,
        *,
        quantization: str = "none",
        device_map: str | dict | None = None,
        max_memory: Mapping | None = None,
        trust_remote_code: bool = False,
        loras: Mapping[str, str | Path] | None = None,
        max_loras: int = 4,
        edits: Sequence[str | Path] = (),
    ):
        import torch
        from transformers import AutoTokenizer

        path = Path(model_dir)
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"model directory not found or has no config.json: {path}")
        device = resolve_device(device)
        loras = {str(k): Path(v) for k, v in (loras or {}).items()}
        check_engine_options(device, dtype, quantization, device_map, has_loras=bool(loras))
        for name, adir in loras.items():
            if not (adir / "adapter_config.json").is_file():
                raise FileNotFoundError(
                    f"LoRA adapter {name!r}: {adir} has no adapter_config.json (not a peft adapter directory)"
                )
        if max_loras < 1:
            raise EngineConfigError(f"max_loras must be >= 1, got {max_loras}")
        if num_threads:
            torch.set_num_threads(num_threads)
        self.model_dir = path
        self.quantization = quantization
        tok = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
        tok.padding_side = "left"  # decoder-only: new tokens must follow the prompt directly
        if tok.pad_token is None:  # LLaMA ships none; pad positions are masked out anyway
            tok.pad_token = tok.unk_token if tok.unk_token is not None else tok.eos_token
        if tok.eos_token_id is None:
            raise ValueError(f"tokenizer in {path} has no EOS token; generation could not stop")
        self.tokenizer = tok
        self.model = load_model(path, device, dtype, quantization, device_map, max_memory, trust_remote_code)
        self.edits = [str(e) for e in edits]
        if edits:  # knowledge edits, in order, each checked against the weights it was made on
            from knowlm_ray.models.edit_delta import apply_edit

            for e in edits:
                apply_edit(self.model, e)
        # Where inputs go: the embedding's device (the first GPU of a device map).
        self.device = self.model.get_input_embeddings().weight.device
        self.max_context = self._context_length()
        self._lock = threading.Lock()  # one generate at a time per engine: torch threads are shared
        self.loras = loras
        self.max_loras = max_loras
        self._loaded: OrderedDict[str, None] = OrderedDict()  # adapters in the model, LRU first
        self._peft = False
        self.adapter_loads = 0  # adapters loaded so far (evictions make it grow past len(loras))
        self._constraint_vocab = None  # constraints.Vocab, built on the first constrained request
        self._vocab_lock = threading.Lock()

    def _context_length(self) -> int:
        cfg = self.model.config
        for name in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
            value = getattr(cfg, name, None)
            if isinstance(value, int) and value > 0:
                return value
        return 2048  # LLaMA-1's context, for configs that do not say

    # -- adapters ----------------------------------------------------------------------------
    @property
    def loaded_adapters(self) -> list[str]:
        return list(self._loaded)

    def _load_adapter(self, name: str) -> None:
        """Load (or touch) ``name``; evict the least recently used beyond ``max_loras``. Holds the lock."""
        if name in self._loaded:
            self._loaded.move_to_end(name)
            return
        if name not in self.loras:  # only configured directories ever reach the disk
            raise UnknownModelError(f"adapter {name!r} is not configured")
        adir = self.loras[name]
        if not self._peft:
            from peft import PeftModel

            self.model = PeftModel.from_pretrained(self.model, str(adir), adapter_name=name, is_trainable=False)
            self._peft = True
        else:
            self.model.load_adapter(str(adir), adapter_name=name, is_trainable=False)
        self.model.eval()
        self._loaded[name] = None
        self.adapter_loads += 1
        log.info("loaded LoRA adapter %r from %s", name, adir)
        while len(self._loaded) > self.max_loras:  # load first, then evict: never zero adapters
            old, _ = self._loaded.popitem(last=False)
            with warnings.catch_warnings():  # "adapter X was active which is now deleted": expected
                warnings.simplefilter("ignore")
                self.model.delete_adapter(old)
            log.info("evicted LoRA adapter %r (max_loras=%d)", old, self.max_loras)

    def _use(self, adapter: str | None):
        """A context in which ``self.model`` computes with ``adapter`` (None: the base weights)."""
        if adapter is None:
            return self.model.disable_adapter() if self._peft else nullcontext()
        self._load_adapter(adapter)
        self.model.set_adapter(adapter)
        return nullcontext()

    # -- one request -------------------------------------------------------------------------
    def prompt_for(self, request: GenerateRequest) -> str:
        return build_prompt(request.instruction, request.input)

    def prepare(self, request: GenerateRequest, adapter: str | None = None) -> Prepared:
        """Tokenise and check one request; raises RequestError naming what is wrong."""
        return self.prepare_prompt(self.prompt_for(request), request.parameters, adapter=adapter)

    def prepare_prompt(
        self,
        prompt: str,
        params: GenerationParams,
        *,
        stop: Sequence[str] = (),
        adapter: str | None = None,
        constraint: Any = None,
    ) -> Prepared:
        """A raw prompt (BOS added, no template); ``constraint``: a ``constraints.ConstraintSpec``."""
        ids = self.tokenizer(prompt, add_special_tokens=True)["input_ids"]
        return self.prepare_ids(ids, params, stop=stop, adapter=adapter, constraint=constraint)

    def compile_constraint(self, spec: Any):
        """A ``ConstraintSpec`` compiled for this tokenizer (cached); ConstraintError if unusable."""
        if self._constraint_vocab is None:
            from knowlm_ray.generation.constraints import Vocab

            with self._vocab_lock:
                if self._constraint_vocab is None:
                    self._constraint_vocab = Vocab(self.tokenizer)
        return self._constraint_vocab.compile(spec)

    def prepare_ids(
        self,
        ids: Sequence[int],
        params: GenerationParams,
        *,
        stop: Sequence[str] = (),
        adapter: str | None = None,
        constraint: Any = None,
    ) -> Prepared:
        if params.max_tokens > self.max_context:
            raise RequestError(
                f"parameters.max_tokens: {params.max_tokens} exceeds the model's context of {self.max_context} tokens",
                CONTEXT_LENGTH_EXCEEDED,
            )
        room = self.max_context - len(ids)
        if room < 1:
            raise RequestError(
                f"prompt is {len(ids)} tokens; the model's context is "
                f"{self.max_context} tokens (instruction + input too long)",
                CONTEXT_LENGTH_EXCEEDED,
            )
        if adapter is not None and adapter not in self.loras:
            raise UnknownModelError(f"adapter {adapter!r} is not configured")
        budget = min(params.max_tokens, room)
        compiled = None
        if constraint is not None:
            from knowlm_ray.generation.constraints import ConstraintError

            if params.num_beams > 1:
                raise RequestError("constrained decoding needs num_beams 1 (a grammar follows one hypothesis)")
            try:
                compiled = self.compile_constraint(constraint)
            except ConstraintError as exc:
                raise RequestError(str(exc)) from None
            if compiled.min_tokens > budget:
                raise RequestError(
                    f"parameters.max_tokens: {budget} new tokens cannot hold the shortest answer of this "
                    f"constraint ({compiled.min_tokens} tokens)"
                )
        return Prepared(tuple(ids), params, budget, tuple(stop), adapter, compiled)

    # -- batches -----------------------------------------------------------------------------
    def generate_batch(self, requests: Sequence[GenerateRequest]) -> list[GenerationResult]:
        return self.generate_prepared([self.prepare(r) for r in requests])

    def generate_prepared(self, items: Sequence[Prepared], hooks: RowHooks | None = None) -> list[GenerationResult]:
        """Results in input order; one ``generate`` call per group of equal parameters and adapter."""
        groups: dict[tuple, list[int]] = {}
        for i, item in enumerate(items):
            groups.setdefault(_group_key(item), []).append(i)
        results: list[GenerationResult | None] = [None] * len(items)
        with self._lock:
            for group in groups.values():
                for idx in self._fit_context(group, items):
                    live = [i for i in idx if hooks is None or not hooks.cancelled(i)]
                    for i in set(idx) - set(live):  # went away while queued: no forward pass at all
                        results[i] = GenerationResult("", 0, len(items[i].input_ids), "cancelled")
                    if not live:
                        continue
                    with self._use(items[live[0]].adapter):
                        out = self._generate_group([items[i] for i in live], live, hooks)
                    for i, res in zip(live, out):
                        results[i] = res
        return results  # type: ignore[return-value]

    def _fit_context(self, group: list[int], items: Sequence[Prepared]) -> list[list[int]]:
        """Split a group so the padded prompt plus the longest budget stays within the context."""
        chunks: list[list[int]] = []
        longest = budget = 0
        for i in sorted(group, key=lambda i: len(items[i].input_ids)):  # like lengths together
            n, m = len(items[i].input_ids), items[i].max_new_tokens
            if chunks and max(longest, n) + max(budget, m) <= self.max_context:
                chunks[-1].append(i)
                longest, budget = max(longest, n), max(budget, m)
            else:
                chunks.append([i])
                longest, budget = n, m
        return chunks

    def _generate_group(
        self, items: list[Prepared], indices: list[int] | None = None, hooks: RowHooks | None = None
    ) -> list[GenerationResult]:
        import torch
        from transformers import LogitsProcessorList, StoppingCriteriaList

        tok = self.tokenizer
        indices = indices if indices is not None else list(range(len(items)))
        batch = tok.pad({"input_ids": [list(p.input_ids) for p in items]}, padding=True, return_tensors="pt").to(
            self.device
        )
        prompt_len = batch["input_ids"].shape[1]
        beams = items[0].params.num_beams > 1
        tracker = _GroupCancel(indices, hooks) if beams else _RowTracker(self, items, indices, hooks, prompt_len)
        config = self._generation_config(items)
        # presence / frequency penalties: before generate's own temperature, top-k, top-p
        processors = LogitsProcessorList(penalty_processors(items[0].params, prompt_len))
        if not beams and any(p.constraint is not None for p in items):
            processors.append(_ConstraintProcessor(tracker.rows, config))
        with torch.inference_mode():
            out = self.model.generate(
                **batch,
                generation_config=config,
                logits_processor=processors,
                stopping_criteria=StoppingCriteriaList([tracker]),
            )
        new_tokens = out[:, prompt_len:].tolist()
        if beams:
            results = [self._result(row, p) for row, p in zip(new_tokens, items)]
            for b, res in enumerate(results):  # beam search cannot stream: the text comes at the end
                if hooks is not None and hooks.wants_text(indices[b]) and res.text:
                    hooks.on_text(indices[b], res.text)
            return results
        return [tracker.result(b, row) for b, row in enumerate(new_tokens)]

    def _generation_config(self, items: list[Prepared]):
        q = items[0].params
        cfg = copy.deepcopy(self.model.generation_config)
        # Every decoding field is set here so a generation_config.json shipped with the model
        # (e.g. do_sample/temperature from a chat model) cannot change what the request asked.
        sampling = q.sampling
        cfg.update(
            do_sample=sampling,
            num_beams=q.num_beams,
            num_return_sequences=1,
            # Sampling knobs are unset for greedy/beam decoding (transformers warns otherwise).
            temperature=q.temperature if sampling else None,
            top_p=q.top_p if sampling else None,
            top_k=q.top_k if sampling else None,  # 0 = off, said explicitly: the default is 50
            repetition_penalty=q.repetition_penalty,
            max_new_tokens=max(p.max_new_tokens for p in items),
            max_length=None,
            min_new_tokens=None,
            eos_token_id=self.tokenizer.eos_token_id,
            pad_token_id=self.tokenizer.pad_token_id,
        )
        return cfg

    def _result(self, row: list[int], p: Prepared) -> GenerationResult:
        row = row[: p.max_new_tokens]
        eos = self.tokenizer.eos_token_id
        if eos in row:
            row = row[: row.index(eos) + 1]
            finish = "stop"
        else:
            finish = "length"
        text = self.tokenizer.decode(row, skip_special_tokens=True)
        cut = find_stop(text, p.stop)
        if cut is not None:
            text, finish = text[:cut], "stop"
        return GenerationResult(
            text=text, num_output_tokens=len(row), num_prompt_tokens=len(p.input_ids), finish_reason=finish
        )

    def describe(self) -> dict[str, Any]:
        return {
            "model_dir": str(self.model_dir),
            "max_context": self.max_context,
            "dtype": str(getattr(self.model, "dtype", "")),
            "device": str(self.device),
            "quantization": self.quantization,
            "adapters": sorted(self.loras),
            "loaded_adapters": self.loaded_adapters,
        }


# ------------------------------------------------------------------------------- stop strings
def find_stop(text: str, stops: Sequence[str]) -> int | None:
    """Index of the earliest stop string in ``text`` (None if none occurs)."""
    found = [i for i in (text.find(s) for s in stops) if i >= 0]
    return min(found) if found else None


def safe_text_end(text: str, stops: Sequence[str]) -> int:
    """How much of ``text`` may be sent now: not a trailing partial character (U+FFFD from a
    byte-fallback token cut mid-character) nor a tail that could still become a stop string.

    Looks only at the last ``max(len(stop)) - 1`` characters, and within them only where a
    stop's first character stands, so its cost does not grow with the text."""
    end = len(text)
    while end and text[end - 1] == "\ufffd":
        end -= 1
    hold = 0
    for s in stops:
        if len(s) < 2:  # a one-character stop has no partial form to hold back
            continue
        k = min(len(s) - 1, end)
        start = end - k  # the longest tail that could still grow into s
        while k > hold:
            at = text.find(s[0], start, end)
            if at < 0 or end - at <= hold:
                break
            if s.startswith(text[at:end]):
                hold = end - at
                break
            start = at + 1
            k = end - start
    return end - hold


class StopMatcher:
    """``find_stop`` over a row's growing text, scanning only what is new: the text since the
    last call plus the ``max(len(stop)) - 1`` characters before it, where a stop could begin and
    still end in the new part. Equal to ``find_stop(text, stops)`` at every call: an occurrence
    starting earlier would lie inside text already searched, and would have ended the row then.
    A decode that rewrote earlier text (rare: the tokenizer may change its mind about a
    character) is searched whole."""

    def __init__(self, stops: Sequence[str]):
        self.stops = tuple(stops)
        self.reach = max((len(s) for s in self.stops), default=1) - 1
        self.searched = ""  # the text of the last call, which holds no stop

    def find(self, text: str) -> int | None:
        if not self.stops:
            return None
        start = 0
        if text.startswith(self.searched):  # the usual case: the old text, with more after it
            start = max(0, len(self.searched) - self.reach)
        found = [i for i in (text.find(s, start) for s in self.stops) if i >= 0]
        if found:
            return min(found)
        self.searched = text
        return None


class _GroupCancel:
    """Beam search: rows are hypotheses, so only a whole group stops (when every caller left)."""

    def __init__(self, indices: list[int], hooks: RowHooks | None):
        self.indices, self.hooks = indices, hooks

    def __call__(self, input_ids, scores, **kwargs):
        import torch

        stop = self.hooks is not None and all(self.hooks.cancelled(i) for i in self.indices)
        return torch.full((input_ids.shape[0],), stop, dtype=torch.bool, device=input_ids.device)


class RowState:
    """One row's progress through decoding: EOS, its own max_new_tokens, stop strings,
    cancellation; decodes and streams its text when it needs to. Shared by the grouped
    ``generate`` path (``_RowTracker``) and the continuous batcher (``continuous.py``)."""

    def __init__(self, tok, item: Prepared, index: int, hooks: RowHooks | None):
        self.tok, self.eos, self.item, self.index, self.hooks = tok, tok.eos_token_id, item, index, hooks
        self.stream = hooks is not None and hooks.wants_text(index)
        self.watch = self.stream or bool(item.stop)
        self.done = False
        self.count = 0  # tokens that belong to the row (EOS included)
        self.finish: str | None = None
        self.text: str | None = None
        self.sent = ""
        self.stops = StopMatcher(item.stop)  # scans each step's new text only
        # constrained decoding: this row's grammar matcher and budget (generation/constraints.py)
        self.constraint = item.constraint.start(item.max_new_tokens) if item.constraint is not None else None

    def _decode(self, ids) -> str:
        return self.tok.decode(ids, skip_special_tokens=True)

    def _emit(self, text: str, final: bool) -> None:
        if not self.stream:
            return
        if not text.startswith(self.sent):  # the tokenizer rewrote text already sent: rare
            if final:
                log.warning("streamed text diverged from the final decode; stream may differ")
            return
        if len(text) > len(self.sent):
            self.hooks.on_text(self.index, text[len(self.sent) :])  # type: ignore[union-attr]
            self.sent = text

    def end(self, count: int, finish: str, text: str | None, row: Sequence[int] | None) -> None:
        self.done, self.count, self.finish = True, count, finish
        if text is None:
            text = self._decode(list(row or ())[:count])
            cut = find_stop(text, self.item.stop)
            if cut is not None:
                text, self.finish = text[:cut], "stop"
        self.text = text
        if finish != "cancelled":
            self._emit(text, final=True)

    def cancelled(self) -> bool:
        return self.hooks is not None and self.hooks.cancelled(self.index)

    def step(self, length: int, last: int, row) -> bool:
        """After the row's ``length``-th new token ``last``; ``row()`` gives its new tokens.
        True when the row is finished now."""
        if self.done:
            return True
        item = self.item
        if last == self.eos:
            self.end(length, "stop", None, row())
        elif self.cancelled():
            self.end(length, "cancelled", "", None)
        elif self.constraint is not None and self.constraint.advance(last):  # the answer is complete
            self.end(length, self.constraint.finish, None, row())
        elif self.watch:
            text = self._decode(row())
            cut = self.stops.find(text)
            if cut is not None:
                self.end(length, "stop", text[:cut], None)
            elif length >= item.max_new_tokens:
                self.end(length, "length", text, None)
            else:
                self._emit(text[: safe_text_end(text, item.stop)], final=False)
        elif length >= item.max_new_tokens:
            self.end(length, "length", None, row())
        return self.done

    def result(self, row: Sequence[int] = ()) -> GenerationResult:
        if self.finish is None:  # generation ended before this row was seen to finish
            self.end(min(len(row), self.item.max_new_tokens), "length", None, row)
        return GenerationResult(
            text=self.text or "",
            num_output_tokens=self.count,
            num_prompt_tokens=len(self.item.input_ids),
            finish_reason=self.finish or "length",
        )


class _ConstraintProcessor:
    """Constrained rows of a ``generate`` batch (the last logits processor): each constrained row
    masks its logits, then top-k / top-p (taken out of generate's own list, so they never cut
    away every allowed token), picks its token (argmax, or a sample) and the budget settles it;
    the row's logits are left with that one token. Free rows get the same top-k / top-p only."""

    def __init__(self, rows: list[RowState], config):
        from transformers import LogitsProcessorList, TopKLogitsWarper, TopPLogitsWarper

        self.rows = rows
        self.sampling = bool(config.do_sample)
        self.warpers = LogitsProcessorList()
        if self.sampling:
            if config.top_k:
                self.warpers.append(TopKLogitsWarper(config.top_k))
            if config.top_p is not None and config.top_p < 1.0:
                self.warpers.append(TopPLogitsWarper(config.top_p))
            config.top_k, config.top_p = 0, 1.0  # applied here instead, after the mask

    def __call__(self, input_ids, scores):
        import torch

        for b, row in enumerate(self.rows):
            c = row.constraint
            line = scores[b : b + 1]
            if c is None or row.done:
                if self.warpers:
                    scores[b : b + 1] = self.warpers(input_ids[b : b + 1], line)
                continue
            token = c.forced()
            if token is None:
                c.mask_(line)
                if self.warpers:
                    line = self.warpers(input_ids[b : b + 1], line)
                if self.sampling:
                    token = int(torch.multinomial(torch.softmax(line.float(), dim=-1), 1)[0, 0])
                else:
                    token = int(line[0].argmax())
                token = c.settle(token)
            scores[b].fill_(float("-inf"))
            scores[b, token] = 0.0
        return scores


class _RowTracker:
    """A stopping criterion over a ``generate`` batch: one ``RowState`` per row. transformers pads
    a row it is told is finished, so the other rows' tokens are exactly what they would be alone."""

    def __init__(
        self,
        engine: GenerationEngine,
        items: list[Prepared],
        indices: list[int],
        hooks: RowHooks | None,
        prompt_len: int,
    ):
        self.rows = [RowState(engine.tokenizer, item, i, hooks) for item, i in zip(items, indices)]
        self.prompt_len = prompt_len

    def __call__(self, input_ids, scores, **kwargs):
        import torch

        new = input_ids[:, self.prompt_len :]
        length = new.shape[1]
        last = new[:, -1].tolist()
        done = [r.step(length, last[b], lambda b=b: new[b].tolist()) for b, r in enumerate(self.rows)]
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)

    def result(self, b: int, row: list[int]) -> GenerationResult:
        return self.rows[b].result(row)
