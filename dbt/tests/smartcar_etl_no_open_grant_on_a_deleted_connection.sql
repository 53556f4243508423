-- A connection the API answered 404 for has every grant closed: it holds nothing.
select g.connection_id, g.permission, g.valid_from
from {{ source('smartcar_etl', 'permission_grants') }} g
join {{ source('smartcar_etl', 'connections') }} c on c.id = g.connection_id
where c.status = 'deleted'
  and g.valid_to is null
