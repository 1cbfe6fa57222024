"""Purchase-propensity metrics on the real UCI Online Retail file (../shared/data), and throughput.

The file is ingested with its adapter (one multi-day interval, no validation: this measures the
model, not the pipeline), then DCN-v2 (wide & deep), the logistic regression and LightGBM are trained
on the same rows and scored on the same frozen test rows: will a customer buy an item again within 14 days of
the cutoff, given what they bought in the 28 days before?

    python -m benchmarks.bench_propensity
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from datetime import datetime, timezone

from benchmarks.data import sample

UCI = sample("uci_online_retail", "online_retail_by_day_concat.csv")  # $SHOPML_DATA_DIR, default ../shared/data


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="shopml-bench-") as home:
        os.environ["SHOPML_HOME"] = home
        from pipeline.core.params import TrainPropensityParams
        from pipeline.core.settings import get_state_paths
        from pipeline.data.dataset import catalog_history, load_events
        from pipeline.data.ingest import Interval, allow_source_folder, ingest_events
        from pipeline.families.purchase_propensity.features import propensity_features
        from pipeline.families.purchase_propensity.train import fit_propensity

        paths = get_state_paths()
        start = time.perf_counter()
        interval = Interval(datetime(2010, 12, 1, tzinfo=timezone.utc), datetime(2011, 12, 10, tzinfo=timezone.utc))
        allow_source_folder(UCI)  # the file this command names
        ingested = ingest_events(interval, str(UCI), paths, adapter_name="uci_online_retail")
        print(
            f"ingested {ingested.rows_accepted:,} purchases of {ingested.rows_read:,} rows in "
            f"{time.perf_counter() - start:.1f}s"
        )
        events, catalog = load_events(paths.staging), catalog_history(paths.staging)  # point in time
        params = TrainPropensityParams(
            valid_days=14,
            test_days=14,
            horizon_days=14,
            lookback_days=28,
            cutoff_stride_days=7,
            epochs=20,
            batch_size=512,
            patience=4,
        )
        start = time.perf_counter()
        fit = fit_propensity(propensity_features(events, catalog, params), params)
        print(
            f"rows: {fit.data['data.train_rows']:,} train ({fit.data['data.cutoffs']} cutoffs, "
            f"{fit.data['data.train_positive_rate']:.3f} positive), {fit.data['data.valid_rows']:,} valid, "
            f"{fit.data['data.test_rows']:,} test; fit in {time.perf_counter() - start:.0f}s, "
            f"DCN-v2 {fit.result.samples_per_second:,.0f} rows/s on {fit.result.device}, "
            f"best epoch {fit.result.best_epoch + 1}"
        )
        m = fit.metrics
        print(f"{'model':>20} {'AUC':>7} {'log loss':>9}")
        print(f"{'DCN-v2 (calibrated)':>20} {m['test_auc']:>7.4f} {m['test_log_loss']:>9.4f}")
        print(f"{'logistic regression':>20} {m['baseline_logreg_auc']:>7.4f} {m['baseline_logreg_log_loss']:>9.4f}")
        ids = "with" if m["baseline_lightgbm_reads_ids"] else "without"
        print(
            f"{'LightGBM':>20} {m['baseline_lightgbm_auc']:>7.4f} {m['baseline_lightgbm_log_loss']:>9.4f}"
            f"   (ids as categorical features or not, chosen on validation: {ids})"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
