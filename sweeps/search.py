"""Hyper-parameter search with Optuna + ASHA: arch, patch scale, threshold, lrs, UDA weight, width.

    python sweeps/search.py [--profile smoke|paper|FILE] [--data DIR] [sweep.num_samples=N] [k=v ...]

Objective: validation mean TPR averaged over sweep.folds (a trial runs its folds in turn and
reports the running mean; ASHA drops poor configurations after the first fold). The Optuna
study is stored in <train.storage>/optuna.db: re-running continues the same study.
"""
import sys

from ipb.inputs import resolve_table
from ipb.search import run_search
from ipb.sweep_cli import champion_line, config_from_args, config_summary, mlflow_ui, parser, \
    start_command, stoppable

ARCHS = ("vgg19", "ms_vgg19", "hrnet_w18", "ms_hrnet_w18")


def space(trial):
    """Define-by-run search space (keys are config keys; patch.scale scales both patch sides)."""
    trial.suggest_categorical("model.arch", ARCHS)
    trial.suggest_categorical("patch.scale", [0.75, 1.0, 1.25])
    trial.suggest_float("method.mpl.threshold", 0.5, 0.95)
    trial.suggest_float("train.lr", 1e-4, 1e-2, log=True)
    trial.suggest_float("method.mpl.student_warmup_lr_scale", 0.01, 1.0, log=True)
    trial.suggest_float("method.lambda_u", 0.1, 4.0, log=True)
    trial.suggest_categorical("model.width", [0.125, 0.25, 0.5, 1.0])


@stoppable
def main() -> int:
    args = parser(__doc__).parse_args()
    cfg = config_from_args(args)
    start_command(cfg)
    print(config_summary("ipb sweep search", cfg), flush=True)
    out = run_search(cfg, space, resolve_table(cfg))
    print("\n" + out["report"]["markdown"])
    print(f"\nbest: {out['best']}" + champion_line(out) + "\nOptuna dashboard:  "
          f"{out['optuna_dashboard']}\n" + mlflow_ui(out), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
