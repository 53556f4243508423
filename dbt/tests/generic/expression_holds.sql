{#- Fails for each row where `expression` is false (a NULL result passes: say what NULL means in it). -#}
{% test expression_holds(model, expression) %}
select *
from {{ model }}
where not ({{ expression }})
{% endtest %}
