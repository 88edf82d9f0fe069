"""A Modal app serving hybrid-router's three default models, one deployment per region.

    modal deploy examples/modal/app.py::app_us      # and ::app_eu, ::app_asia

Each deployment (Modal app `hybrid-router-us`, `-eu`, `-asia`) has one web endpoint,
`inference`, speaking the router's protocol (router_protocol.py) behind Modal's proxy auth,
and one GPU function per model, `generate-<model>`, pinned to the region. The endpoint holds
no GPU: it validates the call and hands it to the model's function, whose containers are the
ones the router counts. See README.md for the router config that matches these settings.
"""

from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass
from typing import Any

import modal
import router_protocol


@dataclass(frozen=True)
class ModelServing:
    """How one model is served: which weights, on which GPU."""

    repo: str  # Hugging Face model id; any causal LM with a chat template will do
    gpu: str  # Modal GPU type; "A10G:2" would be 2 GPUs, and the router's `gpus` must say 2


# The router's model names (its [models] keys) -> how each is served.
MODELS = {
    "llama3.2-1b": ModelServing("meta-llama/Llama-3.2-1B-Instruct", "T4"),
    "mistral-7b": ModelServing("mistralai/Mistral-7B-Instruct-v0.3", "A10G"),
    "qwen2.5-1.5b": ModelServing("Qwen/Qwen2.5-1.5B-Instruct", "T4"),
}
# The router's region names (its [regions] keys) -> Modal's region where containers run.
REGIONS = {"US": "us", "EU": "eu", "ASIA": "ap"}

# What the router's config must agree with (README.md, "Settings that must agree"):
SCALEDOWN_WINDOW_S = 120  # router scaledown_window_s >= this
MAX_CONTAINERS = 1  # per model and region; router max_containers = this
MAX_INPUTS = 1  # requests one GPU container takes at once; router max_inputs = this
STARTUP_TIMEOUT_S = 300  # a container's start (image, boot) ...
TIMEOUT_S = 300  # ... and one input (the first one loads the weights): together <= timeout_s
# The endpoint outlives the GPU call it waits for, so it reports that call's failure itself.
ENDPOINT_TIMEOUT_S = STARTUP_TIMEOUT_S + TIMEOUT_S + 60
ENDPOINT_MAX_INPUTS = 100  # it only waits, so one CPU container serves many calls at once

HF_CACHE = "/hf-cache"
weights = modal.Volume.from_name("hybrid-router-hf-cache", create_if_missing=True)
# The Llama and Mistral weights are gated: the secret holds an HF_TOKEN that may read them.
huggingface = modal.Secret.from_name("huggingface")

web_image = (
    modal.Image.debian_slim(python_version="3.11")
    .uv_pip_install("fastapi[standard]>=0.115")
    .add_local_python_source("router_protocol")
)
gpu_image = (
    modal.Image.debian_slim(python_version="3.11")
    .uv_pip_install(
        "fastapi[standard]>=0.115",  # this module is imported in every container
        "torch>=2.5",
        "transformers>=4.46",
        "accelerate>=1.0",
    )
    .env({"HF_HOME": HF_CACHE})
    .add_local_python_source("router_protocol")
)


def app_name(region: str) -> str:
    """The Modal app of one region's deployment."""
    return f"hybrid-router-{region.lower()}"


def function_name(model: str) -> str:
    """The Modal function serving one model (Modal names allow no dots)."""
    return "generate-" + re.sub(r"[^a-z0-9]+", "-", model.lower()).strip("-")


def endpoint_url(workspace: str, region: str) -> str:
    """Where Modal serves a region's endpoint: https://<workspace>--<app>-<function>.modal.run."""
    return f"https://{workspace}--{app_name(region)}-inference.modal.run"


_loaded: dict[str, tuple[Any, Any]] = {}


def generate(prompt: str, temperature: float, max_tokens: int) -> dict[str, object]:
    """Run one prompt on this function's model (HYBRID_ROUTER_MODEL), on its GPU."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    repo = MODELS[os.environ["HYBRID_ROUTER_MODEL"]].repo
    if repo not in _loaded:  # once per container: later calls reuse the weights in GPU memory
        tokenizer = AutoTokenizer.from_pretrained(repo)
        model = AutoModelForCausalLM.from_pretrained(
            repo, torch_dtype=torch.float16, device_map="cuda"
        )
        _loaded[repo] = (tokenizer, model)
        weights.commit()  # a first download is kept for the next cold start (Modal's docs)
    tokenizer, model = _loaded[repo]
    started = time.monotonic()
    inputs = tokenizer.apply_chat_template(
        [{"role": "user", "content": prompt}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    ).to(model.device)
    sampled = temperature > 0
    with torch.inference_mode():
        output = model.generate(
            **inputs,
            max_new_tokens=max_tokens,
            do_sample=sampled,
            temperature=temperature if sampled else None,
            pad_token_id=tokenizer.eos_token_id,
        )
    prompt_length = inputs["input_ids"].shape[1]
    new_tokens = output[0][prompt_length:]
    return {
        "text": tokenizer.decode(new_tokens, skip_special_tokens=True),
        "tokens_generated": int(new_tokens.shape[0]),
        "prompt_tokens": int(prompt_length),
        "inference_time": time.monotonic() - started,
    }


# Region -> model -> its GPU function; in a container, Modal hydrates the running app's own.
GENERATORS: dict[str, dict[str, modal.Function]] = {}
# Region -> its web endpoint.
ENDPOINTS: dict[str, modal.Function] = {}


async def inference(body: dict[str, Any]) -> Any:
    """The web endpoint: one router call, answered in the router's protocol."""
    from fastapi.responses import JSONResponse

    region = os.environ["HYBRID_ROUTER_REGION"]
    functions = GENERATORS[region]

    async def on_gpu(call: router_protocol.Call) -> router_protocol.Generation:
        result = await functions[call.model].remote.aio(
            call.prompt, call.temperature, call.max_tokens
        )
        return router_protocol.Generation(**result)

    status, reply = await router_protocol.handle(
        body, region=region, models=tuple(MODELS), generate=on_gpu
    )
    return JSONResponse(reply, status_code=status)


def region_app(region: str) -> modal.App:
    """One region's deployment: the endpoint and a GPU function per model, all in `region`."""
    app = modal.App(app_name(region))
    placement = REGIONS[region]
    GENERATORS[region] = {
        model: app.function(
            name=function_name(model),
            image=gpu_image,
            gpu=serving.gpu,
            region=placement,
            scaledown_window=SCALEDOWN_WINDOW_S,
            max_containers=MAX_CONTAINERS,
            startup_timeout=STARTUP_TIMEOUT_S,
            timeout=TIMEOUT_S,
            volumes={HF_CACHE: weights},
            secrets=[huggingface],
            env={"HYBRID_ROUTER_MODEL": model},
        )(modal.concurrent(max_inputs=MAX_INPUTS)(generate))
        for model, serving in MODELS.items()
    }
    ENDPOINTS[region] = app.function(
        name="inference",
        image=web_image,
        region=placement,
        timeout=ENDPOINT_TIMEOUT_S,
        env={"HYBRID_ROUTER_REGION": region},
    )(
        modal.concurrent(max_inputs=ENDPOINT_MAX_INPUTS)(
            # Modal's proxy refuses calls without Modal-Key / Modal-Secret (401) before any
            # container starts, so a stranger cannot make the account spend GPUs.
            modal.fastapi_endpoint(method="POST", requires_proxy_auth=True)(inference)
        )
    )
    return app


app_us = region_app("US")
app_eu = region_app("EU")
app_asia = region_app("ASIA")
