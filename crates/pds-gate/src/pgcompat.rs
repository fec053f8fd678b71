//! PostgreSQL client compatibility, for statements that arrive over the
//! PostgreSQL wire protocol: a `pg_catalog` schema and the functions psql,
//! R's DBI and DBeaver call, from `datafusion-pg-catalog`.
//!
//! It is registered into the statement's own session, after the project's
//! views, so `pg_class`, `pg_attribute` and `information_schema` list those
//! views and nothing else: the catalogue a client sees is the perimeter.
//! Object ids are assigned in name order, so that two statements of one
//! connection (psql's `\d` runs several) agree on them.

use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::catalog::{
    CatalogProvider, CatalogProviderList, MemoryCatalogProvider, MemoryCatalogProviderList,
    MemorySchemaProvider, SchemaProvider,
};
use datafusion::datasource::TableType;
use datafusion::error::DataFusionError;
use datafusion::prelude::SessionContext;
use datafusion_pg_catalog::pg_catalog::catalog_info::CatalogInfo;
use datafusion_pg_catalog::pg_catalog::context::EmptyContextProvider;
use datafusion_pg_catalog::pg_catalog::{
    self as pgc, PgCatalogSchemaProvider, PgCatalogStaticTables,
};
use datafusion_pg_catalog::sql::PostgresCompatibilityParser;

/// What is built once per gate: the static `pg_catalog` tables (types,
/// keywords...) and the SQL rewriter.
pub struct PgCompat {
    statics: Arc<PgCatalogStaticTables>,
    parser: PostgresCompatibilityParser,
}

impl std::fmt::Debug for PgCompat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PgCompat")
    }
}

impl PgCompat {
    /// Builds the static tables and the rewriter.
    pub fn new() -> Result<PgCompat, DataFusionError> {
        Ok(PgCompat {
            statics: Arc::new(PgCatalogStaticTables::try_new()?),
            parser: PostgresCompatibilityParser::new(),
        })
    }

    /// Parses PostgreSQL-flavoured SQL into statements DataFusion plans,
    /// rewriting client idioms (`OPERATOR(pg_catalog.~)`, `::regclass`,
    /// `COLLATE`...).
    pub fn parse(
        &self,
        sql: &str,
    ) -> Result<Vec<datafusion::sql::sqlparser::ast::Statement>, String> {
        self.parser.parse(sql).map_err(|e| e.to_string())
    }

    /// A `pg_catalog` listing the tables of `ctx` as they are now. It keeps
    /// its own copy of the table list, so it can be reused by later
    /// statements over the same tables with the same object ids.
    pub async fn catalog_of(
        &self,
        ctx: &SessionContext,
    ) -> Result<Arc<dyn SchemaProvider>, DataFusionError> {
        let list = Arc::new(MemoryCatalogProviderList::new());
        let catalog = Arc::new(MemoryCatalogProvider::new());
        let public = Arc::new(MemorySchemaProvider::new());
        if let Some(s) = ctx.catalog("datafusion").and_then(|c| c.schema("public")) {
            for name in s.table_names() {
                if let Some(t) = s.table(&name).await? {
                    public.register_table(name, t)?;
                }
            }
        }
        catalog.register_schema("public", public)?;
        list.register_catalog("datafusion".into(), catalog);
        Ok(Arc::new(PgCatalogSchemaProvider::try_new(
            Sorted(list),
            self.statics.clone(),
            EmptyContextProvider,
        )?))
    }

    /// Adds `pg_catalog` and the PostgreSQL functions to a statement session.
    pub fn register(
        &self,
        ctx: &SessionContext,
        provider: Arc<dyn SchemaProvider>,
    ) -> Result<(), DataFusionError> {
        ctx.catalog("datafusion")
            .ok_or_else(|| DataFusionError::Configuration("no default catalog".into()))?
            .register_schema("pg_catalog", provider)?;
        ctx.register_udf(pgc::create_current_database_udf("datafusion"));
        ctx.register_udf(pgc::create_current_schema_udf());
        ctx.register_udf(pgc::create_current_schemas_udf());
        ctx.register_udf(pgc::create_pg_get_userbyid_udf());
        for f in [
            "has_table_privilege",
            "has_schema_privilege",
            "has_database_privilege",
            "has_any_column_privilege",
        ] {
            ctx.register_udf(pgc::has_privilege_udf::create_has_privilege_udf(f));
        }
        ctx.register_udf(pgc::create_pg_table_is_visible());
        ctx.register_udf(pgc::format_type::create_format_type_udf());
        ctx.register_udf(pgc::create_session_user_udf());
        ctx.register_udtf("pg_get_keywords", self.statics.pg_get_keywords.clone());
        ctx.register_udf(pgc::pg_get_expr_udf::create_pg_get_expr_udf());
        ctx.register_udf(pgc::create_pg_get_partkeydef_udf());
        ctx.register_udf(pgc::create_pg_relation_is_publishable_udf());
        ctx.register_udf(pgc::create_pg_get_statisticsobjdef_columns_udf());
        ctx.register_udf(pgc::create_pg_encoding_to_char_udf());
        ctx.register_udf(pgc::create_pg_backend_pid_udf());
        ctx.register_udf(pgc::create_pg_relation_size_udf());
        ctx.register_udf(pgc::create_pg_total_relation_size_udf());
        ctx.register_udf(pgc::create_pg_stat_get_numscans());
        ctx.register_udf(pgc::create_pg_get_constraintdef());
        ctx.register_udf(pgc::create_pg_get_partition_ancestors_udf());
        ctx.register_udf(pgc::quote_ident_udf::create_quote_ident_udf());
        ctx.register_udf(pgc::quote_ident_udf::create_parse_ident_udf());
        ctx.register_udf(pgc::array_bounds_udf::create_array_upper_udf());
        ctx.register_udf(pgc::array_bounds_udf::create_array_lower_udf());
        let state = ctx.state_ref();
        let existing = state.read().clone();
        let new_state =
            datafusion::execution::session_state::SessionStateBuilder::new_from_existing(existing)
                .with_type_planner(Arc::new(pgc::oid_type_planner::PgOidTypePlanner))
                .build();
        *state.write() = new_state;
        pgc::generate_series_arg_coercion::CoerceIntArgsToBigInt::widen(ctx);
        Ok(())
    }
}

/// The session's catalogues, listed in name order so object ids are stable.
#[derive(Debug, Clone)]
struct Sorted(Arc<dyn CatalogProviderList>);

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

#[async_trait]
impl CatalogInfo for Sorted {
    async fn catalog_names(&self) -> Result<Vec<String>, DataFusionError> {
        Ok(sorted(CatalogProviderList::catalog_names(self.0.as_ref())))
    }

    async fn schema_names(&self, catalog: &str) -> Result<Option<Vec<String>>, DataFusionError> {
        Ok(self.0.catalog(catalog).map(|c| sorted(c.schema_names())))
    }

    async fn table_names(
        &self,
        catalog: &str,
        schema: &str,
    ) -> Result<Option<Vec<String>>, DataFusionError> {
        Ok(self
            .0
            .catalog(catalog)
            .and_then(|c| c.schema(schema))
            .map(|s| sorted(s.table_names())))
    }

    async fn table_schema(
        &self,
        catalog: &str,
        schema: &str,
        table: &str,
    ) -> Result<Option<SchemaRef>, DataFusionError> {
        let Some(s) = self.0.catalog(catalog).and_then(|c| c.schema(schema)) else {
            return Ok(None);
        };
        Ok(s.table(table).await?.map(|t| t.schema()))
    }

    async fn table_type(
        &self,
        catalog: &str,
        schema: &str,
        table: &str,
    ) -> Result<Option<TableType>, DataFusionError> {
        let Some(s) = self.0.catalog(catalog).and_then(|c| c.schema(schema)) else {
            return Ok(None);
        };
        Ok(s.table(table).await?.map(|t| t.table_type()))
    }
}
