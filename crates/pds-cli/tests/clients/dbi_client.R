# Drives `pds serve` with R's DBI (RPostgreSQL, libpq); prints one line per observation.
# Usage: Rscript dbi_client.R HOST PORT PROJECT USER PASSWORD
suppressMessages({ library(DBI); library(RPostgreSQL) })
a <- commandArgs(trailingOnly = TRUE)
con <- dbConnect(PostgreSQL(), host = a[1], port = as.integer(a[2]), dbname = a[3], user = a[4], password = a[5])
cat("tables:", paste(sort(dbListTables(con)), collapse = ","), "\n")
cat("fields:", paste(dbListFields(con, "IR_BEN_R"), collapse = ","), "\n")
r <- dbGetQuery(con, 'SELECT COUNT(*) AS n, COUNT(DISTINCT "BEN_NIR_PSA") AS people FROM "ER_PRS_F"')
cat("count:", r$n, r$people, "\n")
r <- dbGetQuery(con, 'SELECT "BEN_SEX_COD" AS sex, COUNT(*) AS n FROM "IR_BEN_R" GROUP BY 1 ORDER BY 1')
cat("by_sex:", paste(r$sex, r$n, sep = "=", collapse = ","), "\n")
dbDisconnect(con)
