{#- Fails when `model` and `compare_model` have different numbers of rows. -#}
{% test row_count_equals(model, compare_model) %}
select counted.model_rows, compared.compared_rows
from (select count(*) as model_rows from {{ model }}) counted
cross join (select count(*) as compared_rows from {{ compare_model }}) compared
where counted.model_rows <> compared.compared_rows
{% endtest %}
