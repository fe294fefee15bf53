"""The offline sentence corpus: prose quotations kept, attributions, art and code dropped, fixed order."""
from pathlib import Path

import pytest

from lcpaq.ir.errors import ConfigError
from lcpaq.tools.models.corpus import fortune_sentences

QUOTES = """A banker is a fellow who lends you his umbrella when the sun is shining
and wants it back the minute it begins to rain.
		-- Mark Twain
%
Short.
%
   /\\_/\\
  ( o.o ) >^< ~~ |||| ____ ==== ++++ #### %%%% @@@@
%
A light wife doth make a heavy husband.
		-- Wm. Shakespeare, "The Merchant of Venice"
%
A banker is a fellow who lends you his umbrella when the sun is shining
and wants it back the minute it begins to rain.
"""


def test_prose_kept_in_order_without_attribution(tmp_path: Path) -> None:
    (tmp_path / "literature").write_text(QUOTES)
    (tmp_path / "literature.dat").write_bytes(b"\x00\x01")  # index files are skipped
    (tmp_path / "art").write_text("A picture of a cat that is made of many characters.\n")  # art files are skipped
    got = fortune_sentences(root=tmp_path)
    assert got == [
        "A banker is a fellow who lends you his umbrella when the sun is shining and wants it back the minute it begins to rain.",
        "A light wife doth make a heavy husband.",
    ]
    assert fortune_sentences(1, root=tmp_path) == got[:1]


def test_missing_corpus_names_the_package(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"no fortunes corpus under .*nothing: install it with `apt-get install fortunes`"):
        fortune_sentences(root=tmp_path / "nothing")
