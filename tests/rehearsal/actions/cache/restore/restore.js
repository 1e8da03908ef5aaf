// actions/cache/restore stand-in: the restore half of ../cache.js.
process.env.PDP_CACHE_MODE = "restore";
require("../cache.js");
