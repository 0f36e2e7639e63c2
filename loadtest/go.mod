module flotilla.dev/flotilla/loadtest

go 1.26.0
