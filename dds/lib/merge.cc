#include "merge.h"

#include <algorithm>
#include <charconv>
#include <map>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"
#include "backend.h"

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

// ---- collations -----------------------------------------------------------

int Sign(int c) { return c < 0 ? -1 : (c > 0 ? 1 : 0); }

int CompareText(absl::string_view a, absl::string_view b, Collation collation) {
  switch (collation) {
    case Collation::kBinary:
      return Sign(a.compare(b));
    case Collation::kRTrim:
      while (!a.empty() && a.back() == ' ') a.remove_suffix(1);
      while (!b.empty() && b.back() == ' ') b.remove_suffix(1);
      return Sign(a.compare(b));
    case Collation::kNoCase: {
      size_t n = std::min(a.size(), b.size());
      for (size_t i = 0; i < n; ++i) {
        // Bytes as unsigned, as SQLite compares them.
        unsigned char x =
            static_cast<unsigned char>(absl::ascii_tolower(static_cast<unsigned char>(a[i])));
        unsigned char y =
            static_cast<unsigned char>(absl::ascii_tolower(static_cast<unsigned char>(b[i])));
        if (x != y) return x < y ? -1 : 1;
      }
      return a.size() < b.size() ? -1 : (a.size() > b.size() ? 1 : 0);
    }
  }
  return 0;
}

// A name as pg_collation_for writes it ("C" quoted, pg_catalog-qualified
// when not on the search path), plain.
std::string Unquoted(absl::string_view name) {
  absl::ConsumePrefix(&name, "pg_catalog.");
  if (name.size() < 2 || name.front() != '"' || name.back() != '"') return std::string(name);
  std::string out;
  for (size_t i = 1; i + 1 < name.size(); ++i) {
    out.push_back(name[i]);
    if (name[i] == '"') ++i;  // "" stands for "
  }
  return out;
}

absl::StatusOr<Collation> Known(const std::string& name, const std::string& what, Dialect dialect,
                                const std::string& default_of) {
  if (dialect == Dialect::kSqlite) {
    std::string lower = absl::AsciiStrToLower(name);
    if (lower == "binary") return Collation::kBinary;
    if (lower == "nocase") return Collation::kNoCase;
    if (lower == "rtrim") return Collation::kRTrim;
    return absl::UnimplementedError(absl::StrCat(
        "cannot merge ", what, " across shards by collation ", name,
        ": only SQLite's BINARY, NOCASE and RTRIM are merged exactly; give the shard key, or "
        "COLLATE one of them"));
  }
  if (name == "C" || name == "POSIX" || name == "ucs_basic") return Collation::kBinary;
  return absl::UnimplementedError(absl::StrCat(
      "cannot merge ", what, " across shards by collation \"", name, "\"", default_of,
      ": only the bytewise collations \"C\", \"POSIX\" and ucs_basic are merged exactly; give "
      "the shard key, write COLLATE \"C\", or create the databases with the C locale"));
}

// The collation the shards' answers compare column `compared` by, as
// `source` says.
absl::StatusOr<Collation> CollationOf(const CollationSource& source, int compared,
                                      const std::vector<ShardAnswer>& parts,
                                      const std::vector<std::string>& columns,
                                      const MergePlan& plan, const MergeContext& context) {
  // What the shards tell of column c, alike in each ("" when none tells).
  auto told = [&](int c) -> absl::StatusOr<std::string> {
    const std::string* how = nullptr;
    for (const ShardAnswer& p : parts) {
      if (static_cast<int>(p.collations.size()) <= c) continue;
      const std::string& n = p.collations[c];
      if (how != nullptr && absl::AsciiStrToLower(*how) != absl::AsciiStrToLower(n)) {
        return absl::FailedPreconditionError(absl::StrCat(
            "the shards' tables differ in how ", source.what, " compares (", *how, ", ", n,
            "); create every shard's table through DDS so that they are alike"));
      }
      how = &n;
    }
    return how != nullptr ? *how : std::string();
  };
  if (!source.named.empty()) return Known(source.named, source.what, plan.dialect, "");
  if (source.declared.set()) {
    absl::StatusOr<int> c = Locate(source.declared, columns);
    if (!c.ok()) return c.status();
    absl::StatusOr<std::string> name = told(*c);
    if (!name.ok()) return name.status();
    if (name->empty()) return Collation::kBinary;
    return Known(*name, source.what, plan.dialect, "");
  }
  if (!source.reported.set()) return Collation::kBinary;
  if (compared >= 0) {
    absl::StatusOr<std::string> type = told(compared);
    if (!type.ok()) return type.status();
    if (type->empty()) return Collation::kBinary;  // compared without a collation
    if (*type != "text") {
      return absl::UnimplementedError(
          absl::StrCat("cannot merge ", source.what, " across shards: its ", *type,
                       " compares by rules of its own; give the shard key, or cast it to text"));
    }
  }
  absl::StatusOr<int> c = Locate(source.reported, columns);
  if (!c.ok()) return c.status();
  for (const ShardAnswer& p : parts) {
    if (p.result.rows.empty()) continue;
    const std::string* text = std::get_if<std::string>(&p.result.rows.front()[*c]);
    if (text == nullptr) return Collation::kBinary;  // no collation derived
    std::string name = Unquoted(*text);
    if (name != "default") return Known(name, source.what, plan.dialect, "");
    if (context.default_collation.empty()) {
      return absl::UnimplementedError(absl::StrCat(
          "cannot merge ", source.what,
          " across shards by the databases' default collation: they do not share one; give the "
          "shard key, or write COLLATE \"C\""));
    }
    return Known(context.default_collation, source.what, plan.dialect, " (the databases' default)");
  }
  return Collation::kBinary;
}

// ---- arithmetic -------------------------------------------------------------

// An exact decimal number: digits (no leading zeros beyond the units), of
// which the last `scale` follow the point.
struct Decimal {
  bool negative = false;
  std::string digits;
  size_t scale = 0;
};

// Reads [-+]digits[.digits], the way PostgreSQL writes integers and numerics.
bool ParseDecimal(absl::string_view s, Decimal* out) {
  out->negative = absl::ConsumePrefix(&s, "-");
  if (!out->negative) absl::ConsumePrefix(&s, "+");
  size_t point = s.find('.');
  std::string whole(s.substr(0, point));
  std::string fraction(point == absl::string_view::npos ? "" : s.substr(point + 1));
  if (whole.empty() && fraction.empty()) return false;
  for (char c : whole + fraction) {
    if (!absl::ascii_isdigit(static_cast<unsigned char>(c))) return false;
  }
  out->digits = whole + fraction;
  out->scale = fraction.size();
  return true;
}

// |a| vs |b| for digit strings of equal length.
int CompareMagnitude(const std::string& a, const std::string& b) { return Sign(a.compare(b)); }

Decimal AddDecimal(Decimal a, Decimal b) {
  size_t scale = std::max(a.scale, b.scale);
  a.digits.append(scale - a.scale, '0');
  b.digits.append(scale - b.scale, '0');
  size_t width = std::max(a.digits.size(), b.digits.size()) + 1;
  a.digits.insert(0, width - a.digits.size(), '0');
  b.digits.insert(0, width - b.digits.size(), '0');
  Decimal out;
  out.scale = scale;
  out.digits.assign(width, '0');
  if (a.negative == b.negative) {
    out.negative = a.negative;
    int carry = 0;
    for (size_t i = width; i-- > 0;) {
      int d = (a.digits[i] - '0') + (b.digits[i] - '0') + carry;
      out.digits[i] = static_cast<char>('0' + d % 10);
      carry = d / 10;
    }
  } else {
    if (CompareMagnitude(a.digits, b.digits) < 0) std::swap(a, b);
    out.negative = a.negative;
    int borrow = 0;
    for (size_t i = width; i-- > 0;) {
      int d = (a.digits[i] - '0') - (b.digits[i] - '0') - borrow;
      borrow = d < 0 ? 1 : 0;
      out.digits[i] = static_cast<char>('0' + d + 10 * borrow);
    }
  }
  size_t keep = scale + 1;  // at least one digit before the point
  size_t zeros = 0;
  while (out.digits.size() - zeros > keep && out.digits[zeros] == '0') ++zeros;
  out.digits.erase(0, zeros);
  if (out.digits.find_first_not_of('0') == std::string::npos) out.negative = false;
  return out;
}

std::string DecimalText(const Decimal& d) {
  std::string out = d.negative ? "-" : "";
  out.append(d.digits, 0, d.digits.size() - d.scale);
  if (d.scale > 0) absl::StrAppend(&out, ".", d.digits.substr(d.digits.size() - d.scale));
  return out;
}

absl::Status IntegerOverflow(const std::string& column) {
  // SQLite's own words for it, as one database would answer.
  return absl::InvalidArgumentError(
      absl::StrCat("integer overflow: the sum in column ", column, " exceeds a 64-bit integer"));
}

// SQLite's sum and count of two shards' parts: integers add exactly and
// fail on overflow as SQLite does; a real makes the sum real.
absl::StatusOr<Value> AddSqlite(const Value& a, const Value& b, const std::string& column) {
  if (Rank(a) == 0) return b;
  if (Rank(b) == 0) return a;
  const int64_t* x = std::get_if<int64_t>(&a);
  const int64_t* y = std::get_if<int64_t>(&b);
  if (x != nullptr && y != nullptr) {
    int64_t out;
    if (__builtin_add_overflow(*x, *y, &out)) return IntegerOverflow(column);
    return out;
  }
  return AsDouble(a) + AsDouble(b);
}

bool FloatType(const std::string& type) { return type == "double precision" || type == "real"; }
bool IntegerType(const std::string& type) {
  return type == "bigint" || type == "integer" || type == "smallint";
}

absl::Status UnmergeableSum(const std::string& column, const std::string& type) {
  return absl::UnimplementedError(
      absl::StrCat("cannot merge the sum in column ", column, " across shards: it is of type ",
                   type, "; only sums of integers, numerics and floats are merged"));
}

// PostgreSQL's sum of two shards' parts: exact decimal text for integer
// and numeric sums (bigint and numeric), doubles for float sums.
absl::StatusOr<Value> AddPostgres(const Value& a, const Value& b, const std::string& type,
                                  const std::string& column) {
  if (Rank(a) == 0) return b;
  if (Rank(b) == 0) return a;
  auto real = [](const Value& v) {
    double d = AsDouble(v);
    if (const std::string* s = std::get_if<std::string>(&v)) {
      if (!absl::SimpleAtod(*s, &d)) d = 0;
    }
    return d;
  };
  if (type == "real") {
    // float4 adds in float4 and is written in its shortest exact form,
    // which the backend reads as a double.
    float x = 0, y = 0;
    const std::string* sa = std::get_if<std::string>(&a);
    const std::string* sb = std::get_if<std::string>(&b);
    if (sa == nullptr || sb == nullptr || !absl::SimpleAtof(*sa, &x) ||
        !absl::SimpleAtof(*sb, &y)) {
      return UnmergeableSum(column, type);
    }
    char text[64];
    std::to_chars_result r = std::to_chars(text, text + sizeof(text), x + y);
    return std::string(text, r.ptr);
  }
  if (FloatType(type)) return real(a) + real(b);
  if (!IntegerType(type) && type != "numeric") return UnmergeableSum(column, type);
  Decimal x, y;
  const std::string* sa = std::get_if<std::string>(&a);
  const std::string* sb = std::get_if<std::string>(&b);
  if (sa != nullptr && sb != nullptr && ParseDecimal(*sa, &x) && ParseDecimal(*sb, &y)) {
    return DecimalText(AddDecimal(x, y));
  }
  return real(a) + real(b);  // NaN or Infinity in a numeric: arithmetic on reals keeps them
}

// A PostgreSQL sum as the backend reads one database's: bigint as an
// integer (out of range as PostgreSQL says it), numeric as an integer when
// it has no fraction and fits, else a real, floats as reals.
absl::StatusOr<Value> FinishPostgresSum(const Value& v, const std::string& type,
                                        const std::string& column) {
  const std::string* text = std::get_if<std::string>(&v);
  if (text == nullptr) return v;  // NULL, or reals already
  if (IntegerType(type)) {
    int64_t i;
    if (absl::SimpleAtoi(*text, &i)) return i;
    return absl::InvalidArgumentError(
        absl::StrCat("bigint out of range: the sum in column ", column, " across shards"));
  }
  if (type == "numeric") return NumericValue(*text);
  if (FloatType(type)) {
    double d;
    if (absl::SimpleAtod(*text, &d)) return d;
  }
  return UnmergeableSum(column, type);
}

struct RowsLess {
  const std::vector<int>* index;
  const std::vector<SortKey>* keys;
  const std::vector<Collation>* collations;
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
      int c = Compare(x, y, (*collations)[k]);
      if (c != 0) return key.descending ? c > 0 : c < 0;
    }
    return false;
  }
};

// Equal keys are one group, one distinct row: compared by each position's collation.
struct KeyLess {
  std::vector<Collation> collations;
  bool operator()(const std::vector<Value>& a, const std::vector<Value>& b) const {
    for (size_t i = 0; i < a.size(); ++i) {
      int c = Compare(a[i], b[i], i < collations.size() ? collations[i] : Collation::kBinary);
      if (c != 0) return c < 0;
    }
    return false;
  }
};

}  // namespace

int Compare(const Value& a, const Value& b, Collation collation) {
  int ra = Rank(a), rb = Rank(b);
  if (ra != rb) return ra < rb ? -1 : 1;
  if (ra == 0) return 0;
  if (ra == 2) return CompareText(std::get<std::string>(a), std::get<std::string>(b), collation);
  const int64_t* x = std::get_if<int64_t>(&a);
  const int64_t* y = std::get_if<int64_t>(&b);
  if (x != nullptr && y != nullptr) return *x < *y ? -1 : (*x > *y ? 1 : 0);
  double dx = AsDouble(a), dy = AsDouble(b);
  return dx < dy ? -1 : (dx > dy ? 1 : 0);
}

absl::StatusOr<RowWindow> RowsWanted(const MergePlan& plan, absl::Span<const Value> params) {
  const bool sqlite = plan.dialect == Dialect::kSqlite;
  // The bound's integer; nullopt for NULL.
  auto value = [&](const Bound& b, const char* what) -> absl::StatusOr<std::optional<int64_t>> {
    if (b.param == 0) return std::optional<int64_t>(b.constant);
    if (b.param > static_cast<int>(params.size())) {
      return absl::InvalidArgumentError(
          absl::StrCat("the statement uses $", b.param, "; parameters given: ", params.size()));
    }
    const Value& v = params[b.param - 1];
    int64_t out = 0;
    bool integer = false;
    if (const int64_t* i = std::get_if<int64_t>(&v)) {
      out = *i;
      integer = true;
    } else if (const double* d = std::get_if<double>(&v)) {
      integer =
          *d >= -9.2e18 && *d <= 9.2e18 && static_cast<double>(static_cast<int64_t>(*d)) == *d;
      if (integer) out = static_cast<int64_t>(*d);
    } else if (const std::string* s = std::get_if<std::string>(&v)) {
      integer = absl::SimpleAtoi(absl::StripAsciiWhitespace(*s), &out);
    } else if (!sqlite) {
      return std::optional<int64_t>();  // PostgreSQL: LIMIT NULL is none, OFFSET NULL is 0
    }
    if (!integer) {  // in the backend's words, then ours
      return absl::InvalidArgumentError(absl::StrCat(
          sqlite ? "datatype mismatch"
                 : absl::StrCat("invalid input syntax for type bigint: \"", ToString(v), "\""),
          ": ", what, " must be an integer, got $", b.param, " = ", ToString(v)));
    }
    return std::optional<int64_t>(out);
  };
  RowWindow out;
  if (plan.offset.has_value()) {
    absl::StatusOr<std::optional<int64_t>> o = value(*plan.offset, "OFFSET");
    if (!o.ok()) return o.status();
    out.offset = o->value_or(0);
    if (out.offset < 0) {
      if (!sqlite) return absl::InvalidArgumentError("OFFSET must not be negative");
      out.offset = 0;  // SQLite: as if 0
    }
  }
  if (plan.limit.has_value()) {
    absl::StatusOr<std::optional<int64_t>> l = value(*plan.limit, "LIMIT");
    if (!l.ok()) return l.status();
    out.count = *l;
    if (out.count.has_value() && *out.count < 0) {
      if (!sqlite) return absl::InvalidArgumentError("LIMIT must not be negative");
      out.count.reset();  // SQLite: no limit
    }
  }
  return out;
}

absl::StatusOr<ResultSet> Merge(const MergePlan& plan, std::vector<ShardAnswer> parts,
                                absl::Span<const Value> params, const MergeContext& context) {
  ResultSet out;
  if (parts.empty()) return out;
  out.columns = parts.front().result.columns;
  for (ShardAnswer& p : parts) {
    if (p.result.columns.size() != out.columns.size()) {
      return absl::InternalError("shards answered with different columns");
    }
    out.rows_affected += p.result.rows_affected;
  }
  const int width = static_cast<int>(out.columns.size());
  auto collation = [&](const CollationSource& s, int compared) {
    return CollationOf(s, compared, parts, out.columns, plan, context);
  };
  const bool sqlite = plan.dialect == Dialect::kSqlite;
  // Collations are read off the shards' answers before their rows move.
  const int visible = width - plan.hidden;
  KeyLess distinct_less;
  if (plan.distinct) {
    for (int c = 0; c < visible; ++c) {
      CollationSource declared;
      declared.declared.index = c;
      declared.what = out.columns[c];
      absl::StatusOr<Collation> k =
          collation(plan.distinct_collations.empty() ? declared : plan.distinct_collations[c], c);
      if (!k.ok()) return k.status();
      distinct_less.collations.push_back(*k);
    }
  }
  std::vector<int> index;
  std::vector<Collation> collations;
  for (const SortKey& k : plan.order_by) {
    absl::StatusOr<int> i = Locate(k.column, out.columns);
    if (!i.ok()) return i.status();
    index.push_back(*i);
    absl::StatusOr<Collation> c = collation(k.collation, *i);
    if (!c.ok()) return c.status();
    collations.push_back(*c);
  }

  std::vector<std::vector<Value>> rows;
  if (plan.aggregate) {
    if (static_cast<int>(plan.ops.size()) != width) {
      return absl::InternalError(absl::StrCat("the merge plan has ", plan.ops.size(),
                                              " columns, the shards answered ", width));
    }
    KeyLess group_less;
    std::vector<int> group;
    for (size_t g = 0; g < plan.group_by.size(); ++g) {
      absl::StatusOr<int> i = Locate(plan.group_by[g], out.columns);
      if (!i.ok()) return i.status();
      group.push_back(*i);
      absl::StatusOr<Collation> c = collation(plan.group_collations[g], *i);
      if (!c.ok()) return c.status();
      group_less.collations.push_back(*c);
    }
    std::vector<Collation> op_collation(width, Collation::kBinary);
    for (int c = 0; c < width; ++c) {
      MergeOp op = plan.ops[c];
      if (op == MergeOp::kMin || op == MergeOp::kMax) {
        absl::StatusOr<Collation> k = collation(plan.op_collations[c], c);
        if (!k.ok()) return k.status();
        op_collation[c] = *k;
      }
      if (op == MergeOp::kSum && !sqlite) continue;  // exact text, checked as it is added
      if (op != MergeOp::kCount && op != MergeOp::kSum) continue;
      for (ShardAnswer& p : parts) {
        for (const std::vector<Value>& row : p.result.rows) {
          if (!Numeric(row[c])) {
            return absl::InvalidArgumentError(absl::StrCat(
                "column ", out.columns[c],
                " is not a number in every shard's answer, so it cannot be added across shards"));
          }
        }
      }
    }
    auto type_of = [&](const std::vector<Value>& row, int c) -> std::string {
      const std::string* t = std::get_if<std::string>(&row[width - plan.sum_types[c]]);
      return t != nullptr ? *t : "";
    };
    std::map<std::vector<Value>, std::vector<Value>, KeyLess> groups(group_less);
    std::vector<std::vector<Value>> order;  // first-seen order of group keys
    for (ShardAnswer& p : parts) {
      for (std::vector<Value>& row : p.result.rows) {
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
            case MergeOp::kSum: {
              absl::StatusOr<Value> sum =
                  sqlite || plan.ops[c] == MergeOp::kCount
                      ? AddSqlite(acc[c], row[c], out.columns[c])
                      : AddPostgres(acc[c], row[c], type_of(row, c), out.columns[c]);
              if (!sum.ok()) return sum.status();
              acc[c] = *std::move(sum);
              break;
            }
            case MergeOp::kMin:
              if (Rank(acc[c]) == 0 ||
                  (Rank(row[c]) != 0 && Compare(row[c], acc[c], op_collation[c]) < 0)) {
                acc[c] = std::move(row[c]);
              }
              break;
            case MergeOp::kMax:
              if (Rank(acc[c]) == 0 ||
                  (Rank(row[c]) != 0 && Compare(row[c], acc[c], op_collation[c]) > 0)) {
                acc[c] = std::move(row[c]);
              }
              break;
          }
        }
      }
    }
    for (const std::vector<Value>& key : order) {
      std::vector<Value>& row = groups[key];
      if (!sqlite) {
        for (int c = 0; c < width; ++c) {
          if (plan.ops[c] != MergeOp::kSum) continue;
          absl::StatusOr<Value> sum = FinishPostgresSum(row[c], type_of(row, c), out.columns[c]);
          if (!sum.ok()) return sum.status();
          row[c] = *std::move(sum);
        }
      }
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
    for (ShardAnswer& p : parts) {
      for (std::vector<Value>& row : p.result.rows) rows.push_back(std::move(row));
    }
  }

  if (plan.distinct) {
    std::map<std::vector<Value>, bool, KeyLess> seen(distinct_less);
    std::vector<std::vector<Value>> kept;
    for (std::vector<Value>& row : rows) {
      std::vector<Value> shown(row.begin(), row.begin() + visible);
      if (seen.emplace(std::move(shown), true).second) kept.push_back(std::move(row));
    }
    rows = std::move(kept);
  }

  if (!plan.order_by.empty()) {
    std::stable_sort(rows.begin(), rows.end(),
                     RowsLess{&index, &plan.order_by, &collations, context.nulls_largest});
  }

  absl::StatusOr<RowWindow> window = RowsWanted(plan, params);
  if (!window.ok()) return window.status();
  size_t begin = std::min<uint64_t>(rows.size(), static_cast<uint64_t>(window->offset));
  size_t end = rows.size();
  if (window->count.has_value()) {
    end = begin + std::min<uint64_t>(end - begin, static_cast<uint64_t>(*window->count));
  }
  for (size_t r = begin; r < end; ++r) {
    rows[r].resize(width - plan.hidden);
    out.rows.push_back(std::move(rows[r]));
  }
  out.columns.resize(width - plan.hidden);
  return out;
}

}  // namespace formica::dds
