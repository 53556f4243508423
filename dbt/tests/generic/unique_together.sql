{#- Fails for each combination of `columns` that occurs more than once (`config: where:` narrows the rows,
    e.g. to the open grants). -#}
{% test unique_together(model, columns) %}
select {{ columns | join(', ') }}, count(*) as occurrences
from {{ model }}
group by {{ columns | join(', ') }}
having count(*) > 1
{% endtest %}
