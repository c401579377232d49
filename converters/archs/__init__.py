"""Architecture registry: Hugging Face architecture name -> converter class.

Each family lives in its own module and lists the HF names it serves; ``ALIASES`` maps other
spellings of the same architecture onto a registered name.
"""

from __future__ import annotations

from converters.archs.base import ArchConverter
from converters.archs.bert import BertConverter, XLMRobertaConverter, XLMRobertaRerankerConverter
from converters.archs.cohere import CohereConverter
from converters.archs.deepseek import DeepseekV2Converter, DeepseekV3Converter
from converters.archs.ernie import Ernie45Converter
from converters.archs.ernie_moe import Ernie45MoeConverter
from converters.archs.exaone import Exaone4Converter
from converters.archs.falcon import FalconConverter
from converters.archs.falcon_h1 import FalconH1Converter
from converters.archs.gemma import (
    Gemma2Converter,
    Gemma3Converter,
    Gemma3MultimodalConverter,
    GemmaConverter,
)
from converters.archs.gemma_embedding import GemmaEmbeddingConverter
from converters.archs.glm import Glm4Converter, GlmConverter
from converters.archs.gpt2 import GPT2Converter
from converters.archs.gptoss import GptOssConverter
from converters.archs.granite import GraniteConverter
from converters.archs.granitehybrid import BambaConverter, GraniteHybridConverter
from converters.archs.granitemoe import GraniteMoeConverter
from converters.archs.helium import HeliumConverter
from converters.archs.jamba import JambaConverter
from converters.archs.lfm2 import Lfm2Converter
from converters.archs.llama import LlamaConverter
from converters.archs.mamba import Mamba2Converter, MambaConverter
from converters.archs.mixtral import MixtralConverter
from converters.archs.modernbert import ModernBertConverter
from converters.archs.mpt import MptConverter
from converters.archs.nomic_bert import NomicBertConverter
from converters.archs.olmo import Olmo2Converter, OlmoConverter
from converters.archs.olmoe import OlmoeConverter
from converters.archs.phi2 import PhiConverter
from converters.archs.phi3 import Phi3Converter
from converters.archs.qwen import Qwen2Converter, Qwen3Converter
from converters.archs.qwen_moe import Qwen2MoeConverter, Qwen3MoeConverter
from converters.archs.qwen_retrieval import Qwen3EmbeddingConverter
from converters.archs.smollm3 import SmolLM3Converter
from converters.archs.stablelm import StableLmConverter
from converters.archs.starcoder import GPTBigCodeConverter
from converters.archs.starcoder2 import Starcoder2Converter
from ggufworker.errors import UnsupportedArchitectureError

_FAMILIES: tuple[type[ArchConverter], ...] = (
    LlamaConverter,
    Qwen2Converter,
    Qwen3Converter,
    GemmaConverter,
    Gemma2Converter,
    Gemma3Converter,
    Gemma3MultimodalConverter,
    Phi3Converter,
    PhiConverter,
    FalconConverter,
    Starcoder2Converter,
    GPT2Converter,
    GPTBigCodeConverter,
    MptConverter,
    StableLmConverter,
    MambaConverter,
    Mamba2Converter,
    Lfm2Converter,
    GraniteHybridConverter,
    BambaConverter,
    FalconH1Converter,
    JambaConverter,
    OlmoConverter,
    Olmo2Converter,
    GraniteConverter,
    GlmConverter,
    Glm4Converter,
    CohereConverter,
    Exaone4Converter,
    SmolLM3Converter,
    Ernie45Converter,
    HeliumConverter,
    # Mixture-of-Experts families
    MixtralConverter,
    Qwen2MoeConverter,
    Qwen3MoeConverter,
    OlmoeConverter,
    GraniteMoeConverter,
    DeepseekV2Converter,
    DeepseekV3Converter,
    GptOssConverter,
    Ernie45MoeConverter,
    # embedding and reranking models (pooled outputs)
    BertConverter,
    XLMRobertaConverter,
    XLMRobertaRerankerConverter,
    ModernBertConverter,
    NomicBertConverter,
    GemmaEmbeddingConverter,
    Qwen3EmbeddingConverter,
)

CONVERTERS: dict[str, type[ArchConverter]] = {
    name: cls for cls in _FAMILIES for name in cls.hf_architectures
}

ALIASES: dict[str, str] = {
    "LLaMAForCausalLM": "LlamaForCausalLM",
    # llama-shaped families published under their own class names
    "InternLM3ForCausalLM": "LlamaForCausalLM",
}


def supported_architectures() -> list[str]:
    """Every architecture name ``convert`` accepts, sorted."""
    return sorted({*CONVERTERS, *ALIASES})


def get_converter(hf_architecture: str) -> type[ArchConverter]:
    """The converter class for a config.json ``architectures[0]`` value.

    Raises:
        UnsupportedArchitectureError: no converter is registered for that name.
    """
    name = ALIASES.get(hf_architecture, hf_architecture)
    try:
        return CONVERTERS[name]
    except KeyError:
        raise UnsupportedArchitectureError(
            f"architecture {hf_architecture!r} is not supported; supported: "
            + ", ".join(supported_architectures())
        ) from None
