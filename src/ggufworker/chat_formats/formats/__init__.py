"""One module per tool-call format family; importing this package registers them all."""

from ggufworker.chat_formats.formats import (  # noqa: F401
    deepseek,
    gemma4,
    generic,
    harmony,
    json_tags,
    llama3,
    mistral,
    named_args,
    pythonic,
    xml_params,
)
