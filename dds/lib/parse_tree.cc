#include "parse_tree.h"

#include <google/protobuf/descriptor.h>
#include <google/protobuf/reflection.h>

#include "absl/strings/ascii.h"

namespace formica::dds {

using google::protobuf::FieldDescriptor;
using google::protobuf::Message;

// Calls `visit` on every message in `m`'s tree, parents first.
void Walk(Message* m, const std::function<void(Message*)>& visit) {
  visit(m);
  const google::protobuf::Reflection* r = m->GetReflection();
  std::vector<const FieldDescriptor*> fields;
  r->ListFields(*m, &fields);
  for (const FieldDescriptor* f : fields) {
    if (f->cpp_type() != FieldDescriptor::CPPTYPE_MESSAGE) continue;
    if (f->is_repeated()) {
      for (int i = 0; i < r->FieldSize(*m, f); ++i) Walk(r->MutableRepeatedMessage(m, f, i), visit);
    } else {
      Walk(r->MutableMessage(m, f), visit);
    }
  }
}

// An expression with its source positions cleared, for comparing two.
std::string Fingerprint(const pg_query::Node& n) {
  pg_query::Node copy = n;
  Walk(&copy, [](Message* m) {
    const FieldDescriptor* f = m->GetDescriptor()->FindFieldByName("location");
    if (f != nullptr && !f->is_repeated()) m->GetReflection()->ClearField(m, f);
  });
  std::string out;
  copy.SerializeToString(&out);
  return out;
}

std::optional<Column> ColumnOf(const pg_query::Node& n) {
  if (!n.has_column_ref()) return std::nullopt;
  const auto& f = n.column_ref().fields();
  if (f.empty() || !f[f.size() - 1].has_string()) return std::nullopt;
  Column c;
  c.name = f[f.size() - 1].string().sval();
  if (f.size() >= 2 && f[f.size() - 2].has_string()) c.qualifier = f[f.size() - 2].string().sval();
  return c;
}

bool IsOperator(const pg_query::A_Expr& e, const char* op) {
  return e.kind() == pg_query::AEXPR_OP && e.name_size() == 1 && e.name(0).has_string() &&
         e.name(0).string().sval() == op;
}

// The conjuncts of a condition (a AND b AND c -> a, b, c).
void Conjuncts(const pg_query::Node& n, std::vector<const pg_query::Node*>* out) {
  if (n.has_bool_expr() && n.bool_expr().boolop() == pg_query::AND_EXPR) {
    for (const pg_query::Node& a : n.bool_expr().args()) Conjuncts(a, out);
  } else {
    out->push_back(&n);
  }
}

const char* const kAggregates[] = {"count", "sum", "min", "max", "avg"};

std::optional<MergeOp> AggregateOf(const pg_query::Node& n) {
  if (!n.has_func_call()) return std::nullopt;
  const pg_query::FuncCall& f = n.func_call();
  if (f.funcname_size() == 0 || !f.funcname(f.funcname_size() - 1).has_string()) {
    return std::nullopt;
  }
  std::string name = absl::AsciiStrToLower(f.funcname(f.funcname_size() - 1).string().sval());
  if (name == "count") return MergeOp::kCount;
  if (name == "sum") return MergeOp::kSum;
  if (name == "min") return MergeOp::kMin;
  if (name == "max") return MergeOp::kMax;
  if (name == "avg") return MergeOp::kAvg;
  return std::nullopt;
}

bool IsAggregateName(const pg_query::FuncCall& f) {
  if (f.funcname_size() == 0 || !f.funcname(f.funcname_size() - 1).has_string()) return false;
  std::string name = absl::AsciiStrToLower(f.funcname(f.funcname_size() - 1).string().sval());
  for (const char* a : kAggregates) {
    if (name == a) return true;
  }
  return false;
}

// Aggregates whose per-shard results cannot be combined (or that the
// merge does not know): refused over several shards.
bool IsUnmergeableAggregate(const pg_query::FuncCall& f) {
  if (f.agg_within_group() || f.agg_order_size() > 0) return true;
  if (f.funcname_size() == 0 || !f.funcname(f.funcname_size() - 1).has_string()) return false;
  std::string name = absl::AsciiStrToLower(f.funcname(f.funcname_size() - 1).string().sval());
  if (f.agg_star() && name != "count") return true;
  static const char* const kOthers[] = {"string_agg",
                                        "array_agg",
                                        "group_concat",
                                        "total",
                                        "bool_and",
                                        "bool_or",
                                        "every",
                                        "stddev",
                                        "stddev_pop",
                                        "stddev_samp",
                                        "variance",
                                        "var_pop",
                                        "var_samp",
                                        "json_agg",
                                        "jsonb_agg",
                                        "json_object_agg",
                                        "jsonb_object_agg",
                                        "xmlagg",
                                        "bit_and",
                                        "bit_or",
                                        "bit_xor",
                                        "percentile_cont",
                                        "percentile_disc",
                                        "mode",
                                        "corr",
                                        "covar_pop",
                                        "covar_samp",
                                        "regr_avgx",
                                        "regr_avgy",
                                        "regr_count",
                                        "regr_intercept",
                                        "regr_r2",
                                        "regr_slope",
                                        "regr_sxx",
                                        "regr_sxy",
                                        "regr_syy",
                                        "range_agg",
                                        "range_intersect_agg"};
  for (const char* o : kOthers) {
    if (name == o) return true;
  }
  return false;
}

// The last part of a type's name, lower case ("int4" for pg_catalog.int4).
std::string TypeNameOf(const pg_query::TypeName& t) {
  if (t.names_size() == 0 || !t.names(t.names_size() - 1).has_string()) return "";
  return absl::AsciiStrToLower(t.names(t.names_size() - 1).string().sval());
}

bool IsIntegerType(const std::string& name) {
  return name == "int2" || name == "int4" || name == "int8" || name == "integer" || name == "int" ||
         name == "bigint" || name == "smallint";
}

bool IsTextType(const std::string& name) {
  return name == "text" || name == "varchar" || name == "bpchar" || name == "char";
}

pg_query::Node IntConst(int64_t v) {
  pg_query::Node n;
  n.mutable_a_const()->mutable_ival()->set_ival(static_cast<int32_t>(v));
  return n;
}

// The expression under CASTs and unary pluses, which SQLite looks through
// for a column's collation.
const pg_query::Node& Peeled(const pg_query::Node& n) {
  if (n.has_type_cast()) return Peeled(n.type_cast().arg());
  if (n.has_a_expr() && IsOperator(n.a_expr(), "+") && !n.a_expr().has_lexpr()) {
    return Peeled(n.a_expr().rexpr());
  }
  return n;
}

// The collation a COLLATE names, "" for none.
std::string CollationName(const pg_query::CollateClause& c) {
  if (c.collname_size() == 0 || !c.collname(c.collname_size() - 1).has_string()) return "";
  return c.collname(c.collname_size() - 1).string().sval();
}

bool IsPlainColumn(const pg_query::Node& n) {
  if (!n.has_column_ref()) return false;
  const auto& f = n.column_ref().fields();
  return !f.empty() && f[f.size() - 1].has_string();
}

// function(arg), as the parser would have read it.
pg_query::Node Call(const char* function, const pg_query::Node& arg) {
  pg_query::Node n;
  pg_query::FuncCall* f = n.mutable_func_call();
  f->add_funcname()->mutable_string()->set_sval(function);
  *f->add_args() = arg;
  f->set_funcformat(pg_query::COERCE_EXPLICIT_CALL);
  f->set_location(-1);
  return n;
}

// arg::text.
pg_query::Node AsText(const pg_query::Node& arg) {
  pg_query::Node n;
  pg_query::TypeCast* c = n.mutable_type_cast();
  *c->mutable_arg() = arg;
  c->mutable_type_name()->add_names()->mutable_string()->set_sval("text");
  c->mutable_type_name()->set_typemod(-1);
  c->mutable_type_name()->set_location(-1);
  c->set_location(-1);
  return n;
}

}  // namespace formica::dds
