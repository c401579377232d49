"""Prompts the benchmarks send: varied openings that invite long continuations."""

PROMPTS = (
    "Write a long story about a lighthouse keeper who",
    "Explain in detail how a steam engine works, starting with",
    "The history of the printing press began when",
    "Describe a walk through a busy market in the morning:",
    "List the steps to bake bread at home, and explain why",
    "A letter to a friend about a trip to the mountains:",
    "The most important ideas in physics are",
    "Once upon a time, in a kingdom by the sea,",
)
