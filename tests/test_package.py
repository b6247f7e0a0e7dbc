from __future__ import annotations

import subprocess
import sys

import genmeasures as gm


def test_every_public_name_resolves() -> None:
    for name in gm.__all__:
        assert getattr(gm, name) is not None, name
    assert gm.evaluate.score_table is not None


def test_evaluate_and_its_report_do_not_import_torch() -> None:
    code = (
        "import sys\n"
        "import pandas as pd\n"
        "import genmeasures as gm\n"
        "from genmeasures.evaluate import score_table\n"
        "from genmeasures.evaluate.report import format_summary\n"
        "table = pd.DataFrame({'a': [1, 1, 2, 2], 'b': [1, 2, 1, 2],\n"
        "                      'gap': [0.1, 0.2, 0.3, 0.5], 'm': [1.0, 2.0, 2.5, 4.0]})\n"
        "print(format_summary(score_table(table, hparams=['a', 'b'])))\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=False
    )
    assert done.returncode == 0, done.stderr
    assert "m " in done.stdout
