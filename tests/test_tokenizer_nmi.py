"""On the kit's default generated data, first-level item codes recover the planted categories."""

import pytest
from sklearn.metrics import normalized_mutual_info_score

from align3gr_kit.config import RunConfig
from align3gr_kit.data.split import leave_one_out
from align3gr_kit.data.synthetic import generate_synthetic
from align3gr_kit.scid import ScidTable
from align3gr_kit.tokenizer.pipeline import run_tokenize


@pytest.mark.slow
def test_first_level_codes_recover_categories(tmp_path, request):
    ds = generate_synthetic()  # the default: 1000 users x 500 items, 8 categories
    split = leave_one_out(ds, 20)
    cfg = RunConfig(seed=0).override({"tokenizer.sasrec.epochs": 4, "tokenizer.phase1_max_epochs": 6,
                                      "tokenizer.phase2_epochs": 8})
    cache = request.config.cache.mkdir("align3gr-minilm")
    summary = run_tokenize(cfg, ds, split, tmp_path, cache_dir=cache, progress=False)
    codes = ScidTable.load(tmp_path / "item_scids.json").codes
    nmi = normalized_mutual_info_score(ds.items["category"], codes[:, 0])
    assert nmi >= 0.5, f"NMI of first-level codes vs categories = {nmi:.3f}"
    assert summary["item_collisions"] == 0 and summary["user_collisions"] == 0
    assert summary["u2i_auc"] > 0.7  # users are aligned with the items they buy (0.5 = chance)
