"""Embeddings: all-MiniLM-L6-v2 exported by ovchat and run by OpenVINO GenAI agrees with the transformers
reference, and `ovchat serve --embedding-model` answers OpenAI's /v1/embeddings and Ollama's /api/embed
through their official clients."""

from __future__ import annotations

import json

import httpx
import numpy as np
import ollama
import pytest
from helpers import Server

from ovchat.errors import OvchatError

pytestmark = pytest.mark.slow

TEXTS = ["The cat sat on the mat.", "Paris is the capital of France.", "Quarterly revenue grew by 12 percent.",
         "An embedding maps a sentence to a vector. " * 40]  # the last is past 256 tokens: cut as the reference cuts


@pytest.fixture(scope="module")
def embedder(minilm_ov):
    from ovchat import load_embedder

    return load_embedder(str(minilm_ov))


def test_vectors_agree_with_the_transformers_reference(embedder, minilm_ov):
    from ovchat.eval.answers import Embedder as Reference

    ours, reference = embedder.embed(TEXTS), Reference()(TEXTS)
    assert ours.shape == (len(TEXTS), 384) and embedder.dimensions == 384
    cosines = (ours * reference).sum(axis=1) / np.linalg.norm(ours, axis=1) / np.linalg.norm(reference, axis=1)
    assert cosines.min() >= 0.999, cosines
    assert np.allclose(np.linalg.norm(ours, axis=1), 1, atol=1e-3)  # normalised, as its config says
    # One at a time or together: the same vectors (padding changes nothing).
    assert np.allclose(embedder.embed(TEXTS[:1])[0], ours[0], atol=1e-4)
    info = json.loads((minilm_ov / "ovchat_manifest.json").read_text())
    assert info["kind"] == "embedding" and info["source"]["spec"] == "all-minilm-l6-v2"
    assert info["embedding"] == {"pooling": "mean", "normalize": True, "max_length": 256}
    assert info["recipe"]["task"] == "feature-extraction" and info["recipe"]["weight_format"] == "fp16"


def test_the_wrong_kind_of_model_is_refused_by_name(smollm2_ov, minilm_ov):
    import ovchat

    with pytest.raises(OvchatError, match="is an embedding model"):
        ovchat.load(str(minilm_ov))
    with pytest.raises(OvchatError, match="is not an embedding model"):
        ovchat.load_embedder(str(smollm2_ov))
    with pytest.raises(OvchatError, match="group_size applies to a chat model"):
        ovchat.export("all-minilm-l6-v2", group_size=64)


@pytest.fixture(scope="module")
def both(smollm2_ov, minilm_ov, tmp_path_factory):
    """`ovchat serve` with SmolLM2 and the embedding model beside it."""
    running = Server(smollm2_ov, "--embedding-model", str(minilm_ov),
                     log_path=tmp_path_factory.mktemp("serve") / "serve.log")
    yield running
    running.stop()


def test_openai_embeddings_through_the_official_client(both, embedder):
    client = both.client()
    listed = {m.id for m in client.models.list().data}
    assert listed == {"smollm2-135m", "all-minilm-l6-v2"}
    answer = client.embeddings.create(model="all-minilm-l6-v2", input=TEXTS)  # the client asks for base64
    vectors = np.array([d.embedding for d in answer.data])
    assert [d.index for d in answer.data] == list(range(len(TEXTS)))
    assert np.allclose(vectors, embedder.embed(TEXTS), atol=1e-5)
    lengths = embedder.lengths(TEXTS)
    assert answer.usage.prompt_tokens == answer.usage.total_tokens == sum(min(n, 256) for n in lengths)
    floats = httpx.post(both.base_url + "/v1/embeddings", json={"model": "all-minilm-l6-v2", "input": TEXTS[0],
                                                                "encoding_format": "float"}).json()
    assert np.allclose(floats["data"][0]["embedding"], vectors[0], atol=1e-5)
    assert "all-minilm-l6-v2" in both.log()  # the startup line names it


def test_ollama_embed_through_the_official_client(both, embedder):
    client = ollama.Client(host=both.base_url)
    answer = client.embed(model="all-minilm-l6-v2", input=TEXTS[:3])
    assert np.allclose(np.array(answer.embeddings), embedder.embed(TEXTS[:3]), atol=1e-5)
    assert answer.prompt_eval_count == sum(embedder.lengths(TEXTS[:3]))
    assert {m.model for m in client.list().models} == {"smollm2-135m:latest", "all-minilm-l6-v2:latest"}
    with pytest.raises(ollama.ResponseError) as refused:
        client.embed(model="all-minilm-l6-v2", input=TEXTS[3], truncate=False)
    assert refused.value.status_code == 400 and "more than this model reads (256)" in refused.value.error


@pytest.mark.parametrize("body,param,status", [
    ({"input": []}, "input", 400),
    ({"input": ""}, "input[0]", 400),
    ({"input": [[1, 2, 3]]}, "input[0]", 400),
    ({"input": ["ok", 5]}, "input[1]", 400),
    ({"input": ["x"] * 2049}, "input", 400),
    ({"input": "x", "encoding_format": "int8"}, "encoding_format", 400),
    ({"input": "x", "dimensions": 128}, "dimensions", 400),
    ({"input": "x", "model": "smollm2-135m"}, "model", 400),  # the chat model: says which one embeds
    ({"input": "x", "model": "nope"}, "model", 404),
])
def test_bad_embedding_input_is_refused_by_field(both, body, param, status):
    answer = httpx.post(both.base_url + "/v1/embeddings", json={"model": "all-minilm-l6-v2", **body})
    assert answer.status_code == status, answer.text
    assert answer.json()["error"]["param"] == param and answer.json()["error"]["message"]


def test_a_server_without_an_embedding_model_says_how_to_add_one(server):
    answer = httpx.post(server.base_url + "/v1/embeddings", json={"model": "all-minilm-l6-v2", "input": "x"})
    assert answer.status_code == 404 and "--embedding-model" in answer.json()["error"]["message"]
