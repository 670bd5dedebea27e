// A line diff (longest common subsequence), for a key's versions. Values are pretty-printed
// JSON; beyond MAX lines a side is compared as a whole (replaced) to stay responsive.
const MAX = 2000;

export function diffLines(a, b) {
  const x = a ? a.split("\n") : [];
  const y = b ? b.split("\n") : [];
  if (x.length > MAX || y.length > MAX) {
    return [...x.map((l) => ["-", l]), ...y.map((l) => ["+", l])];
  }
  const n = x.length;
  const m = y.length;
  const lcs = Array.from({ length: n + 1 }, () => new Uint32Array(m + 1));
  for (let i = n - 1; i >= 0; i--) {
    for (let j = m - 1; j >= 0; j--) {
      lcs[i][j] = x[i] === y[j] ? lcs[i + 1][j + 1] + 1 : Math.max(lcs[i + 1][j], lcs[i][j + 1]);
    }
  }
  const ops = [];
  let i = 0;
  let j = 0;
  while (i < n && j < m) {
    if (x[i] === y[j]) {
      ops.push([" ", x[i]]);
      i++;
      j++;
    } else if (lcs[i + 1][j] >= lcs[i][j + 1]) ops.push(["-", x[i++]]);
    else ops.push(["+", y[j++]]);
  }
  while (i < n) ops.push(["-", x[i++]]);
  while (j < m) ops.push(["+", y[j++]]);
  return ops;
}
