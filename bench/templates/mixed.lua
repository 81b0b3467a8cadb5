local n, plain, odd = 0, nil, nil
request = function()
    if plain == nil then
        plain, odd = wrk.format(nil, "${path}"), wrk.format(nil, "${other}")
    end
    n = n + 1
    if n % ${every} == 0 then return odd end
    return plain
end
