"""A small dense matrix class in pure Python.

Good enough for teaching, for tests that must not depend on NumPy, and for
the occasional 4x4 transform. Uses lists of floats internally; every
operation returns a new matrix.
"""

from __future__ import annotations

from numbers import Number
from typing import Iterable, List, Sequence, Tuple

EPS = 1e-12


class Matrix:
    __slots__ = ("rows", "cols", "_data")

    def __init__(self, data: Iterable[Sequence[float]]) -> None:
        rows = [list(map(float, r)) for r in data]
        if not rows or not rows[0]:
            raise ValueError("a matrix needs at least one row and one column")
        width = len(rows[0])
        for i, r in enumerate(rows):
            if len(r) != width:
                raise ValueError(f"row {i} has {len(r)} entries, expected {width}")
        self._data: List[List[float]] = rows
        self.rows, self.cols = len(rows), width

    # ----- constructors --------------------------------------------------
    @classmethod
    def zeros(cls, rows: int, cols: int) -> "Matrix":
        return cls([[0.0] * cols for _ in range(rows)])

    @classmethod
    def identity(cls, n: int) -> "Matrix":
        return cls([[1.0 if i == j else 0.0 for j in range(n)] for i in range(n)])

    # ----- basic protocol ------------------------------------------------
    @property
    def shape(self) -> Tuple[int, int]:
        return self.rows, self.cols

    def __getitem__(self, idx: Tuple[int, int]) -> float:
        i, j = idx
        return self._data[i][j]

    def row(self, i: int) -> List[float]:
        return list(self._data[i])

    def col(self, j: int) -> List[float]:
        return [r[j] for r in self._data]

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Matrix) or other.shape != self.shape:
            return NotImplemented
        return all(abs(a - b) <= 1e-9 for ra, rb in zip(self._data, other._data)
                   for a, b in zip(ra, rb))

    def __repr__(self) -> str:
        body = ",\n        ".join("[" + ", ".join(f"{x:g}" for x in r) + "]" for r in self._data)
        return f"Matrix([{body}])"

    # ----- arithmetic ----------------------------------------------------
    def _check_same_shape(self, other: "Matrix", op: str) -> None:
        if self.shape != other.shape:
            raise ValueError(f"cannot {op} {self.shape} and {other.shape} matrices")

    def __add__(self, other: "Matrix") -> "Matrix":
        self._check_same_shape(other, "add")
        return Matrix([[a + b for a, b in zip(ra, rb)] for ra, rb in zip(self._data, other._data)])

    def __sub__(self, other: "Matrix") -> "Matrix":
        self._check_same_shape(other, "subtract")
        return Matrix([[a - b for a, b in zip(ra, rb)] for ra, rb in zip(self._data, other._data)])

    def __mul__(self, k: float) -> "Matrix":
        if not isinstance(k, Number):
            return NotImplemented
        return Matrix([[k * x for x in r] for r in self._data])

    __rmul__ = __mul__

    def __matmul__(self, other: "Matrix") -> "Matrix":
        if self.cols != other.rows:
            raise ValueError(f"shape mismatch for matmul: {self.shape} @ {other.shape}")
        other_cols = [other.col(j) for j in range(other.cols)]
        return Matrix([[sum(a * b for a, b in zip(r, c)) for c in other_cols] for r in self._data])

    def transpose(self) -> "Matrix":
        return Matrix([self.col(j) for j in range(self.cols)])

    T = property(transpose)

    # ----- linear algebra ------------------------------------------------
    def lu(self) -> Tuple["Matrix", "Matrix", List[int], int]:
        """LU decomposition with partial pivoting: P A = L U.

        Returns (L, U, perm, sign) where ``perm`` lists the original row
        index of each row of PA and ``sign`` is the permutation's parity.
        """
        if self.rows != self.cols:
            raise ValueError("LU decomposition needs a square matrix")
        n = self.rows
        a = [r[:] for r in self._data]
        perm = list(range(n))
        sign = 1
        lower = [[0.0] * n for _ in range(n)]
        for k in range(n):
            pivot = max(range(k, n), key=lambda i: abs(a[i][k]))
            if abs(a[pivot][k]) < EPS:
                raise ZeroDivisionError("matrix is singular")
            if pivot != k:
                a[k], a[pivot] = a[pivot], a[k]
                lower[k], lower[pivot] = lower[pivot], lower[k]
                perm[k], perm[pivot] = perm[pivot], perm[k]
                sign = -sign
            lower[k][k] = 1.0
            for i in range(k + 1, n):
                factor = a[i][k] / a[k][k]
                lower[i][k] = factor
                for j in range(k, n):
                    a[i][j] -= factor * a[k][j]
        return Matrix(lower), Matrix(a), perm, sign

    def determinant(self) -> float:
        try:
            _, upper, _, sign = self.lu()
        except ZeroDivisionError:
            return 0.0
        det = float(sign)
        for i in range(self.rows):
            det *= upper[i, i]
        return det

    def solve(self, b: Sequence[float]) -> List[float]:
        """Solve A x = b by forward and back substitution."""
        lower, upper, perm, _ = self.lu()
        n = self.rows
        pb = [b[p] for p in perm]
        y = [0.0] * n
        for i in range(n):
            y[i] = pb[i] - sum(lower[i, j] * y[j] for j in range(i))
        x = [0.0] * n
        for i in reversed(range(n)):
            x[i] = (y[i] - sum(upper[i, j] * x[j] for j in range(i + 1, n))) / upper[i, i]
        return x

    def inverse(self) -> "Matrix":
        n = self.rows
        columns = [self.solve([1.0 if i == j else 0.0 for i in range(n)]) for j in range(n)]
        return Matrix(columns).transpose()


if __name__ == "__main__":
    a = Matrix([[4, 3, 2], [2, 1, 3], [3, 2, 1]])
    print("det(A) =", round(a.determinant(), 6))
    print("solve  =", [round(v, 4) for v in a.solve([25, 19, 16])])
    assert a @ a.inverse() == Matrix.identity(3)
    print(a.T)
