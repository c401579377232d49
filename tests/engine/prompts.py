"""Eight short, varied prompts the batched-vs-alone tests submit together."""

PROMPTS = [
    "The capital of France is",
    "List three colours:",
    "def fibonacci(n):",
    "Once upon a time, in a small village,",
    "The best way to learn a language is",
    "Water boils at",
    "In 1969, the first humans",
    "A haiku about autumn:\n",
]
