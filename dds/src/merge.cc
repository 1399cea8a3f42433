#include "merge.h"

#include <algorithm>
#include <map>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"

namespace formica::dds {
namespace {

int Rank(const Value& v) {
  if (std::holds_alternative<std::monostate>(v)) return 0;
  if (std::holds_alternative<std::string>(v)) return 2;
  return 1;
}

double AsDouble(const Value& v) {
  if (const int64_t* i = std::get_if<int64_t>(&v)) return static_cast<double>(*i);
  if (const double* d = std::get_if<double>(&v)) return *d;
  return 0;  // callers check Numeric() first
}

bool Numeric(const Value& v) { return Rank(v) != 2; }  // NULL, integer or real

absl::StatusOr<int> Locate(const ColumnRef& ref, const std::vector<std::string>& columns) {
  int n = static_cast<int>(columns.size());
  if (ref.index >= 0 && ref.index < n) return ref.index;
  if (ref.from_end > 0 && ref.from_end <= n) return n - ref.from_end;
  if (!ref.name.empty()) {
    int found = -1;
    for (int i = 0; i < n; ++i) {
      if (columns[i] != ref.name) continue;
      if (found >= 0) {
        return absl::InvalidArgumentError(absl::StrCat("the sort or group column '", ref.name,
                                                       "' is ambiguous in the merged result"));
      }
      found = i;
    }
    if (found >= 0) return found;
    return absl::InvalidArgumentError(absl::StrCat(
        "the sort or group column '", ref.name,
        "' is not in the shards' results; name it in the select list to sort across shards"));
  }
  return absl::InternalError("a merge column is out of range of the shards' results");
}

Value Add(const Value& a, const Value& b) {
  if (Rank(a) == 0) return b;
  if (Rank(b) == 0) return a;
  const int64_t* x = std::get_if<int64_t>(&a);
  const int64_t* y = std::get_if<int64_t>(&b);
  if (x != nullptr && y != nullptr) {
    int64_t out;
    if (!__builtin_add_overflow(*x, *y, &out)) return out;
  }
  return AsDouble(a) + AsDouble(b);
}

struct RowsLess {
  const std::vector<int>* index;
  const std::vector<SortKey>* keys;
  bool nulls_largest;
  bool operator()(const std::vector<Value>& a, const std::vector<Value>& b) const {
    for (size_t k = 0; k < keys->size(); ++k) {
      const SortKey& key = (*keys)[k];
      const Value& x = a[(*index)[k]];
      const Value& y = b[(*index)[k]];
      bool xn = Rank(x) == 0, yn = Rank(y) == 0;
      if (xn || yn) {
        if (xn && yn) continue;
        bool nulls_first =
            key.nulls_first.value_or(key.descending ? nulls_largest : !nulls_largest);
        return xn ? nulls_first : !nulls_first;
      }
      int c = Compare(x, y);
      if (c != 0) return key.descending ? c > 0 : c < 0;
    }
    return false;
  }
};

struct KeyLess {
  bool operator()(const std::vector<Value>& a, const std::vector<Value>& b) const {
    for (size_t i = 0; i < a.size(); ++i) {
      int c = Compare(a[i], b[i]);
      if (c != 0) return c < 0;
    }
    return false;
  }
};

}  // namespace

std::string ToString(const Value& v) {
  switch (v.index()) {
    case 0:
      return "NULL";
    case 1:
      return std::to_string(std::get<int64_t>(v));
    case 2:
      return absl::StrCat(std::get<double>(v));
    default:
      return std::get<std::string>(v);
  }
}

int Compare(const Value& a, const Value& b) {
  int ra = Rank(a), rb = Rank(b);
  if (ra != rb) return ra < rb ? -1 : 1;
  if (ra == 0) return 0;
  if (ra == 2) {
    int c = std::get<std::string>(a).compare(std::get<std::string>(b));
    return c < 0 ? -1 : (c > 0 ? 1 : 0);
  }
  const int64_t* x = std::get_if<int64_t>(&a);
  const int64_t* y = std::get_if<int64_t>(&b);
  if (x != nullptr && y != nullptr) return *x < *y ? -1 : (*x > *y ? 1 : 0);
  double dx = AsDouble(a), dy = AsDouble(b);
  return dx < dy ? -1 : (dx > dy ? 1 : 0);
}

absl::StatusOr<int64_t> Resolve(const Bound& b, const std::vector<Value>& params) {
  if (b.param == 0) return b.constant;
  if (b.param > static_cast<int>(params.size())) {
    return absl::InvalidArgumentError(
        absl::StrCat("the statement uses $", b.param, "; parameters given: ", params.size()));
  }
  const Value& v = params[b.param - 1];
  int64_t out = -1;
  if (const int64_t* i = std::get_if<int64_t>(&v)) {
    out = *i;
  } else if (const std::string* s = std::get_if<std::string>(&v)) {
    if (!absl::SimpleAtoi(*s, &out)) out = -1;
  }
  if (out < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("LIMIT and OFFSET must be integers of 0 or more, "
                     "got $",
                     b.param, " = ", ToString(v)));
  }
  return out;
}

absl::StatusOr<ResultSet> Merge(const MergePlan& plan, std::vector<ResultSet> parts,
                                const std::vector<Value>& params, bool nulls_largest) {
  ResultSet out;
  if (parts.empty()) return out;
  out.columns = parts.front().columns;
  for (ResultSet& p : parts) {
    if (p.columns.size() != out.columns.size()) {
      return absl::InternalError("shards answered with different columns");
    }
    out.rows_affected += p.rows_affected;
  }
  const int width = static_cast<int>(out.columns.size());

  std::vector<std::vector<Value>> rows;
  if (plan.aggregate) {
    if (static_cast<int>(plan.ops.size()) != width) {
      return absl::InternalError(absl::StrCat("the merge plan has ", plan.ops.size(),
                                              " columns, the shards answered ", width));
    }
    std::vector<int> group;
    for (const ColumnRef& g : plan.group_by) {
      absl::StatusOr<int> i = Locate(g, out.columns);
      if (!i.ok()) return i.status();
      group.push_back(*i);
    }
    for (ResultSet& p : parts) {
      for (const std::vector<Value>& row : p.rows) {
        for (int c = 0; c < width; ++c) {
          MergeOp op = plan.ops[c];
          if ((op == MergeOp::kCount || op == MergeOp::kSum) && !Numeric(row[c])) {
            return absl::InvalidArgumentError(absl::StrCat(
                "column ", out.columns[c],
                " is not a number in every shard's answer, so it cannot be added across shards"));
          }
        }
      }
    }
    std::map<std::vector<Value>, std::vector<Value>, KeyLess> groups;
    std::vector<std::vector<Value>> order;  // first-seen order of group keys
    for (ResultSet& p : parts) {
      for (std::vector<Value>& row : p.rows) {
        std::vector<Value> key;
        key.reserve(group.size());
        for (int g : group) key.push_back(row[g]);
        auto [it, fresh] = groups.try_emplace(key);
        if (fresh) {
          it->second = std::move(row);
          order.push_back(key);
          continue;
        }
        std::vector<Value>& acc = it->second;
        for (int c = 0; c < width; ++c) {
          switch (plan.ops[c]) {
            case MergeOp::kKeep:
            case MergeOp::kAvg:
              break;
            case MergeOp::kCount:
            case MergeOp::kSum:
              acc[c] = Add(acc[c], row[c]);
              break;
            case MergeOp::kMin:
              if (Rank(acc[c]) == 0 || (Rank(row[c]) != 0 && Compare(row[c], acc[c]) < 0)) {
                acc[c] = std::move(row[c]);
              }
              break;
            case MergeOp::kMax:
              if (Rank(acc[c]) == 0 || (Rank(row[c]) != 0 && Compare(row[c], acc[c]) > 0)) {
                acc[c] = std::move(row[c]);
              }
              break;
          }
        }
      }
    }
    for (const std::vector<Value>& key : order) {
      std::vector<Value>& row = groups[key];
      for (int c = 0; c < width; ++c) {
        if (plan.ops[c] != MergeOp::kAvg) continue;
        const Value& sum = row[width - plan.avg_parts[c].first];
        const Value& count = row[width - plan.avg_parts[c].second];
        if (Rank(sum) == 0 || Rank(count) == 0 || AsDouble(count) == 0) {
          row[c] = std::monostate();
        } else {
          row[c] = AsDouble(sum) / AsDouble(count);
        }
      }
      rows.push_back(std::move(row));
    }
  } else {
    for (ResultSet& p : parts) {
      for (std::vector<Value>& row : p.rows) rows.push_back(std::move(row));
    }
  }

  if (plan.distinct) {
    std::map<std::vector<Value>, bool, KeyLess> seen;
    std::vector<std::vector<Value>> kept;
    for (std::vector<Value>& row : rows) {
      std::vector<Value> visible(row.begin(), row.end() - plan.hidden);
      if (seen.emplace(std::move(visible), true).second) kept.push_back(std::move(row));
    }
    rows = std::move(kept);
  }

  if (!plan.order_by.empty()) {
    std::vector<int> index;
    for (const SortKey& k : plan.order_by) {
      absl::StatusOr<int> i = Locate(k.column, out.columns);
      if (!i.ok()) return i.status();
      index.push_back(*i);
    }
    std::stable_sort(rows.begin(), rows.end(), RowsLess{&index, &plan.order_by, nulls_largest});
  }

  size_t begin = 0, end = rows.size();
  if (plan.offset.has_value()) {
    absl::StatusOr<int64_t> o = Resolve(*plan.offset, params);
    if (!o.ok()) return o.status();
    begin = std::min<size_t>(rows.size(), static_cast<size_t>(*o));
  }
  if (plan.limit.has_value()) {
    absl::StatusOr<int64_t> l = Resolve(*plan.limit, params);
    if (!l.ok()) return l.status();
    end = std::min<size_t>(rows.size(), begin + static_cast<size_t>(*l));
  }
  for (size_t r = begin; r < end; ++r) {
    rows[r].resize(width - plan.hidden);
    out.rows.push_back(std::move(rows[r]));
  }
  out.columns.resize(width - plan.hidden);
  return out;
}

}  // namespace formica::dds
