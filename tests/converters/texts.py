"""Varied texts for tokenization checks (beyond converters.verify.SAMPLE_TEXTS)."""

from __future__ import annotations

EXTRA_TEXTS = (
    "Ünïcödé façade — “quotes” and ‘apostrophes’ … ½ ≠ ∞ ∑ √2",
    "中文分词测试：今天天气很好，我们去公园散步吧！",
    "日本語: 東京は日本の首都です。カタカナ、ひらがな。",
    "🙂🙃 🇫🇷 👨‍👩‍👧‍👦 🏳️‍🌈 ❤️‍🔥",
    "for (int i = 0; i < n; ++i) { sum += a[i] * b[i]; }\n",
    "SELECT id, name FROM users WHERE age >= 18 ORDER BY name;",
    "x" * 40 + " " * 17 + "y\n\n\n\n" + "\t" * 5 + "z",
    "0123456789 00 000 0000 12345678901234567890 -42 +3.5e-7 0x1F",
    "  two leading spaces, then   three  inside and trailing   ",
    "https://example.com/path?query=1&x=%20y#frag user@example.org",
    "Mixed-case WORDS and CamelCaseIdentifiers_with_underscores",
)
