#!/usr/bin/env bash
# Mutation testing (mutmut) of the permission history, the document validation, the retry policy,
# the response sorting (classify and the reading of error bodies), the batch store, the configuration,
# doctor, the document archive and rebuild, the rate budget, the token cache, the fetch path and the client,
# against the SQLite tests of those areas. Not part of CI: it takes over an hour on 2 cores; name areas to
# run fewer.
# Builds .venv-mutation (mutmut kept out of the project's own environment), runs, prints a score per
# area with the equivalent mutants (scripts/mutation-equivalent.txt, each with its reason) set aside.
# Extra arguments replace the default set of mutant names (globs), e.g. 'etl.history.*'.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv-mutation/bin/mutmut ] || python3 -m venv .venv-mutation
.venv-mutation/bin/python -m pip install --quiet --disable-pip-version-check 'mutmut==3.8.1' 'pytest-timeout==2.4.0' \
    -e '.[test]'
rm -rf mutants
areas=("etl.history.*" "etl.api.documents.*" "etl.api.retry.*" "etl.api.answers.x_classify*"
       "etl.api.answers.x_error_info*" "etl.api.answers.x__scalar_text*" "etl.api.answers.x__clip*"
       "etl.api.answers.x_redact*" "etl.db.batch.*" "etl.db.writer.xǁBatchWriterǁ*" "etl.db.writer.x__count_into_run*"
       "etl.config.loading.x__from_text*" "etl.config.loading.xǁ_Loadingǁ*" "etl.config.loading.x__take_*"
       "etl.config.loading.x__assemble*" "etl.config.loading.x_unknown_variables*" "etl.config.showing.*"
       "etl.doctor.*" "etl.db.archive.*" "etl.db.rebuild.*"
       "etl.api.ratelimit.*" "etl.db.budget.xǁRateBudgetǁlease_tokens*" "etl.db.budget.xǁRateBudgetǁdrain_tokens*"
       "etl.db.budget.xǁRateBudgetǁ_refilled*" "etl.db.budget.xǁRateBudgetǁbudget_tokens*" "etl.db.budget.x__bounded*"
       "etl.context.x_budget_key*" "etl.context.xǁStoreLedgerǁ*" "etl.api.auth.*"
       "etl.fetch.x_fetch_outcomes*" "etl.fetch.x__window*" "etl.fetch.x__one*" "etl.fetch.xǁPageAheadǁ*"
       "etl.api.client.*" "etl.api.answers.*" "etl.api.transport.*" "etl.api.listing.*")
[ "$#" -gt 0 ] && areas=("$@")
.venv-mutation/bin/mutmut run --max-children "${MUTATION_CHILDREN:-2}" "${areas[@]}" > mutants.log 2>&1 || true
exec .venv-mutation/bin/python scripts/mutation_score.py "${areas[@]}"
