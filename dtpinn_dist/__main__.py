"""``python -m dtpinn_dist``: print the version and what this installation can do."""
from .info import report

if __name__ == "__main__":
    print(report())
