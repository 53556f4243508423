-- One row per interval in which a connection held a permission (permission_grants), with the
-- connection's application, user and vehicle: join it to anything that has a connection, user or
-- vehicle id and a time. valid_to is NULL (and is_open true) while the connection still holds it.
select
    g.connection_id,
    c.application,
    c.user_id,
    c.vehicle_id,
    v.make,
    v.model,
    g.permission,
    g.valid_from,
    g.valid_to,
    g.valid_to is null as is_open
from {{ source('smartcar_etl', 'permission_grants') }} as g
inner join {{ source('smartcar_etl', 'connections') }} as c on c.id = g.connection_id
left join {{ source('smartcar_etl', 'vehicles') }} as v on v.id = c.vehicle_id
