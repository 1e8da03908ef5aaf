// actions/cache/save stand-in: the save half of ../cache.js.
process.env.PDP_CACHE_MODE = "save";
require("../cache.js");
