"""Text from data, escaped for the console, Markdown and plots, and shortened."""

from __future__ import annotations

from mia.text import markdown_text, plot_text, printable, shorten


def test_printable_escapes_control_and_bidi_characters():
    assert printable("a\x1b[2Jb\u202ec\x00") == "a\\x1b[2Jb\\u202ec\\x00"
    assert printable("one\ntwo\t") == "one\\x0atwo\\x09"
    assert printable("one\ntwo", keep_newlines=True) == "one\ntwo"
    assert printable("данные ＝ é") == "данные ＝ é"


def test_markdown_text_escapes_syntax_but_keeps_plain_ids():
    assert markdown_text("data_addon") == "data_addon"
    assert markdown_text("_x_ *y* [z](u) <b> a|b `c` $d$") == (
        r"\_x\_ \*y\* \[z\](u) \<b\> a\|b \`c\` \$d\$"
    )
    assert markdown_text("a\nb") == r"a\\x0ab"


def test_plot_text_never_starts_mathtext():
    assert plot_text("promo_$5_$10") == r"promo_\$5_\$10"


def test_shorten_states_the_full_length():
    assert shorten("x" * 80) == "x" * 80
    assert shorten("x" * 1000) == "x" * 80 + "... (1,000 characters)"
