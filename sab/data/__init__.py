"""Datasets: readers of the standard files, and a fetcher that verifies checksums.

python -m sab.data fetch mnist --to ~/data/mnist      # where a network exists
python -m sab.data verify mnist --in ~/data/mnist     # files copied by hand
"""

from sab.data.readers import DataError

__all__ = ["DataError"]
